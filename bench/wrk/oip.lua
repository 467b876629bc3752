-- POST one prebuilt Open Inference Protocol body, over and over, and report
-- latency percentiles.
--
-- wrk -t1 -c16 -d5s -s oip.lua http://127.0.0.1:8000/v2/models/mlp/infer \
--     -- BODY_FILE CONTENT_TYPE [INFERENCE_HEADER_LENGTH]
--
-- The third argument is the JSON header length of an OIP binary-tensor body
-- (sent as Inference-Header-Content-Length); leave it out for plain JSON.
-- The request is built once per thread (no request() callback) and
-- responses are not parsed in Lua (no response() callback): both would cost
-- client CPU on a machine the server shares.

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= nil and args[3] ~= "" then
    wrk.headers["Inference-Header-Content-Length"] = args[3]
  end
end

-- One machine-readable line; latencies are in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
