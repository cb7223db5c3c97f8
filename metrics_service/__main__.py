from __future__ import annotations

from metrics_service.cli import main

raise SystemExit(main())
