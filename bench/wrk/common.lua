-- Shared by every scenario script (loaded with dofile); wrk 4 runs one copy per Lua state.
--
-- Arguments after `--` on the wrk command line:
--   1  users file: one seeded userName a line (every one a patient with visits)
--   2  bearer token (an admin token signed with the stack's secret)
--   3  seed for math.random (each thread adds its own id: runs are repeatable)
--   4  visits file (optional): "userName visitId" a line, for scenarios that name a visit
--
-- Every script gets the same reporting: response() counts answers by status code in each
-- thread, and done() prints one line "BENCH_RESULT {json}" with the rate, the latency
-- percentiles (microseconds), wrk's socket errors and the merged status counts. The
-- Python side (bench/loadgen.py) reads that line; a run with any non-2xx answer or socket
-- error is flagged there as not a valid figure.

local M = {}

local users, visits = {}, {}
local get_headers, post_headers

-- Main state: setup() and done() run here, once per thread and once at the end.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

-- Thread states: init() once, then request() and response() per request.
statuses = {}

local function read_lines(path, into)
   local f = assert(io.open(path, "r"), "cannot open " .. path)
   for line in f:lines() do
      if line ~= "" then into[#into + 1] = line end
   end
   f:close()
   assert(#into > 0, path .. " is empty")
end

function init(args)
   read_lines(assert(args[1], "usage: -- USERS_FILE TOKEN [SEED] [VISITS_FILE]"), users)
   local auth = "Bearer " .. assert(args[2], "a token is required")
   math.randomseed((tonumber(args[3]) or 1) * 7919 + (thread_id or 0))
   if args[4] and args[4] ~= "" then read_lines(args[4], visits) end
   -- wrk.format() uses the table it is given instead of wrk.headers, so each kind of
   -- request carries its own complete set.
   get_headers = { ["Authorization"] = auth, ["Accept"] = "application/json" }
   post_headers = { ["Authorization"] = auth, ["Content-Type"] = "application/json" }
end

-- 503s that carry Retry-After (a shed: the server refused before doing any work) are
-- counted apart from those that do not (an error that is not load shedding).
retry_after = 0

-- Clients that honour Retry-After (BENCH_HONOUR_RETRY_AFTER=1 in wrk's environment): every
-- 503 or 429 with Retry-After makes one connection wait that long before its next request.
-- wrk calls delay() before each request with no word of which connection asks, so the
-- waits owed are kept in a queue and paid by the next connections to ask: as many waits,
-- as long, as a well-behaved client would make. Without the variable there is no delay()
-- (wrk then sends each request as soon as the last one is answered, as before).
local honour = os.getenv("BENCH_HONOUR_RETRY_AFTER") == "1"
local owed, owed_first, owed_last = {}, 1, 0

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local after = headers["Retry-After"] or headers["retry-after"]
   if status == 503 and after then
      retry_after = retry_after + 1
   end
   if honour and after and (status == 503 or status == 429) then
      owed_last = owed_last + 1
      owed[owed_last] = (tonumber(after) or 1) * 1000
   end
end

if honour then
   function delay()
      if owed_first > owed_last then return 0 end
      local ms = owed[owed_first]
      owed[owed_first] = nil
      owed_first = owed_first + 1
      return ms
   end
end

local function pick_user()
   return users[math.random(#users)]
end

-- A visit as API.md shows it, with a random start time so that lists stay ordered by it.
local VISIT_BODY = '{"type":"outpatient","startedAt":"2026-%02d-%02dT%02d:%02d:00Z",'
   .. '"endedAt":"2026-%02d-%02dT%02d:%02d:00Z","reason":"follow-up",'
   .. '"diagnoses":[{"system":"ICD-10","code":"E11.9","display":"Type 2 diabetes mellitus"}],'
   .. '"vitals":{"heightCm":168.0,"weightKg":72.5,"systolic":128,"diastolic":82,'
   .. '"heartRate":70,"temperatureC":36.8},'
   .. '"medications":[{"name":"metformin","dose":"500 mg","frequency":"twice daily"}],'
   .. '"notes":"written by make bench"}'

function M.get_user()
   return wrk.format("GET", "/v1/users/" .. pick_user(), get_headers)
end

function M.list_visits()
   return wrk.format("GET", "/v1/users/" .. pick_user() .. "/visits", get_headers)
end

function M.get_visit()
   assert(#visits > 0, "get_visit needs the visits file (argument 4)")
   local user, visit = visits[math.random(#visits)]:match("^(%S+)%s+(%S+)$")
   return wrk.format("GET", "/v1/users/" .. user .. "/visits/" .. visit, get_headers)
end

function M.post_visit()
   local mon, day, hour, min = math.random(1, 12), math.random(1, 28), math.random(0, 22), math.random(0, 59)
   local body = string.format(VISIT_BODY, mon, day, hour, min, mon, day, hour + 1, min)
   return wrk.format("POST", "/v1/users/" .. pick_user() .. "/visits", post_headers, body)
end

-- A weighted choice among the functions above: weights = { {0.45, M.get_user}, ... }.
function M.mix(weights)
   local total = 0
   for _, w in ipairs(weights) do total = total + w[1] end
   return function()
      local r, acc = math.random() * total, 0
      for _, w in ipairs(weights) do
         acc = acc + w[1]
         if r < acc then return w[2]() end
      end
      return weights[#weights][2]()
   end
end

local function json_object(t)
   local parts = {}
   for k, v in pairs(t) do
      parts[#parts + 1] = string.format('"%s":%s', tostring(k), tostring(v))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local merged, with_retry_after = {}, 0
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses") or {}) do
         merged[status] = (merged[status] or 0) + n
      end
      with_retry_after = with_retry_after + (thread:get("retry_after") or 0)
   end
   local e = summary.errors
   local pct = {}
   for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
      pct[#pct + 1] = string.format('"%s":%d', tostring(p), latency:percentile(p))
   end
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"latency_us":{"mean":%.1f,"max":%d,"stdev":%.1f,"percentiles":{%s}},'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"statuses":%s,"retry_after_503":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      latency.mean, latency.max, latency.stdev, table.concat(pct, ","),
      e.connect, e.read, e.write, e.status, e.timeout,
      json_object(merged), with_retry_after))
end

return M
