-- bench/http/infer.lua - wrk script of the HTTP benchmark: every request is the same batch-1
-- Open Inference Protocol v2 infer call, POSTed as JSON; done() prints one machine-readable
-- line.
--
--   wrk -t1 -c64 -d10s -s infer.lua http://127.0.0.1:PORT/v2/models/mlp784/infer -- BODY.json
--
-- BODY.json is the request body sent as is (bench/http/make_model.py writes request.json:
-- 784 pixel values with 3 decimals). The last line of the output is
--
--   RESULT {"requests": N, "duration_s": S, "rps": R, "p50_us": .., "p90_us": .., "p99_us": ..,
--           "max_us": .., "errors": E, "non2xx": K}
--
-- Latencies are wrk's per-request times (closed loop: each connection sends its next request
-- when the answer arrives). errors counts connect/read/write failures and timeouts; non2xx
-- counts answers with a status of 400 or more (wrk counts those apart from the requests).

local body_path = nil

function init(args)
   body_path = args[1] or os.getenv("INFER_BODY")
   if body_path == nil then
      error("infer.lua: pass the request body file after --, e.g. -- request.json")
   end
   local f = assert(io.open(body_path, "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      'RESULT {"requests": %d, "duration_s": %.3f, "rps": %.1f, "p50_us": %d, ' ..
      '"p90_us": %d, "p99_us": %d, "max_us": %d, "errors": %d, "non2xx": %d}\n',
      summary.requests, secs, summary.requests / secs, latency:percentile(50),
      latency:percentile(90), latency:percentile(99), latency.max,
      e.connect + e.read + e.write + e.timeout, e.status))
end
