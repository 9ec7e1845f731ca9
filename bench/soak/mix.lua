-- bench/soak/mix.lua - wrk script of the soak test: a fixed mix of requests against one
-- infera server with a fine-tuning job running, and a tally of every status code.
--
--   wrk -t2 -c256 -d5m --latency --timeout 10s -s mix.lua http://127.0.0.1:PORT \
--       -- KEY JOB_ID INFER.json EXPLAIN.json
--
-- KEY is an API key with the infer and train scopes (sent as "Authorization: Bearer KEY"),
-- JOB_ID the running fine-tuning job, INFER.json a batch-1 Open Inference Protocol v2 request
-- for the digits model and EXPLAIN.json the same with "parameters": {"method": "saliency"}.
--
-- The mix is a fixed cycle of 20 requests per wrk thread (not random, so two runs send the
-- same thing): 16 POST /v2/models/digits/infer (80%), 2 POST /v2/models/digits/explain
-- (10%), 1 GET /v1/fine_tuning/jobs/JOB_ID and 1 GET /v1/fine_tuning/jobs/JOB_ID/events (5%
-- each). Each thread starts at a different point of the cycle.
--
-- response() counts every status code per thread; done() adds them up and prints two
-- machine-readable lines (the last of the output):
--
--   CODES {"200": N, "429": K, ...}
--   RESULT {"requests": N, "duration_s": S, "rps": R, "p50_us": .., "p90_us": .., "p99_us": ..,
--           "p999_us": .., "max_us": .., "mean_us": .., "connect": .., "read": .., "write": ..,
--           "timeout": .., "status_errors": .., "sent": {"infer": .., ...}}
--
-- wrk's "status errors" are answers with a status of 400 or more; connect/read/write/timeout
-- are socket errors and timeouts (--timeout), never answers.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

local reqs, kinds = {}, {}

function init(args)
   local key, job, infer_path, explain_path = args[1], args[2], args[3], args[4]
   if explain_path == nil then
      error("mix.lua: pass KEY JOB_ID INFER.json EXPLAIN.json after --")
   end
   local function slurp(p)
      local f = assert(io.open(p, "rb"))
      local s = f:read("*a")
      f:close()
      return s
   end
   local auth = "Bearer " .. key
   local post = {["Authorization"] = auth, ["Content-Type"] = "application/json"}
   local get = {["Authorization"] = auth}
   local infer = wrk.format("POST", "/v2/models/digits/infer", post, slurp(infer_path))
   local explain = wrk.format("POST", "/v2/models/digits/explain", post, slurp(explain_path))
   local jobget = wrk.format("GET", "/v1/fine_tuning/jobs/" .. job, get)
   local events = wrk.format("GET", "/v1/fine_tuning/jobs/" .. job .. "/events", get)
   -- positions 0..19 of the cycle
   for i = 0, 19 do
      if i == 4 or i == 14 then
         reqs[i], kinds[i] = explain, "explain"
      elseif i == 9 then
         reqs[i], kinds[i] = jobget, "job"
      elseif i == 19 then
         reqs[i], kinds[i] = events, "events"
      else
         reqs[i], kinds[i] = infer, "infer"
      end
   end
   counter = (id or 0) * 7
   codes = {}
   sent = {infer = 0, explain = 0, job = 0, events = 0}
end

function request()
   local i = counter % 20
   counter = counter + 1
   sent[kinds[i]] = sent[kinds[i]] + 1
   return reqs[i]
end

function response(status, headers, body)
   local k = tostring(status)
   codes[k] = (codes[k] or 0) + 1
end

local function json_obj(t)
   local keys = {}
   for k in pairs(t) do table.insert(keys, k) end
   table.sort(keys)
   local parts = {}
   for _, k in ipairs(keys) do
      table.insert(parts, string.format('"%s": %d', k, t[k]))
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
   local all, allsent = {}, {}
   for _, t in ipairs(threads) do
      for k, v in pairs(t:get("codes") or {}) do all[k] = (all[k] or 0) + v end
      for k, v in pairs(t:get("sent") or {}) do allsent[k] = (allsent[k] or 0) + v end
   end
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write("CODES " .. json_obj(all) .. "\n")
   io.write(string.format(
      'RESULT {"requests": %d, "duration_s": %.3f, "rps": %.1f, "p50_us": %d, "p90_us": %d, ' ..
      '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.0f, "connect": %d, "read": %d, ' ..
      '"write": %d, "timeout": %d, "status_errors": %d, "sent": %s}\n',
      summary.requests, secs, summary.requests / secs, latency:percentile(50),
      latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
      latency.mean, e.connect, e.read, e.write, e.timeout, e.status, json_obj(allsent)))
end
