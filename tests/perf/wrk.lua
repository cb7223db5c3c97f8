-- Driven by environment variables set by the harness:
--   BENCH_TEMPLATE  a file holding one event; "@ID@" becomes a fresh event_id per event
--   BENCH_BATCH     0 posts the event itself, N posts a JSON array of N events
--   BENCH_RUN       a prefix that keeps event_ids unique across runs
-- Without BENCH_TEMPLATE requests are GETs. `done` prints one JSON line (microseconds).
local template_file = os.getenv("BENCH_TEMPLATE")
local batch = tonumber(os.getenv("BENCH_BATCH") or "0")
local run = os.getenv("BENCH_RUN") or "00000000"
local template = nil
local counter = 0

if template_file and template_file ~= "" then
  local fh = assert(io.open(template_file, "rb"))
  template = fh:read("*a")
  fh:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function one()
  counter = counter + 1
  local id = string.format("%s-0000-4000-8000-%012d", run, counter)
  return (template:gsub("@ID@", id))
end

-- A batch is built once with "@REQ@-NNNN" ids, so each request costs one gsub:
-- 100 gsubs per request made wrk, not the server, the bottleneck.
local batch_template = nil
if template and batch > 0 then
  local parts = {}
  for i = 1, batch do
    parts[i] = template:gsub("@ID@", string.format("@REQ@%04d", i))
  end
  batch_template = "[" .. table.concat(parts, ",") .. "]"
end

function request()
  if template == nil then
    return wrk.format()
  end
  if batch == 0 then
    return wrk.format(nil, nil, nil, one())
  end
  counter = counter + 1
  local prefix = string.format("%s-0000-4000-8000-%08d", run, counter)
  return wrk.format(nil, nil, nil, (batch_template:gsub("@REQ@", prefix)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
