-- wrk scenario: 90 % reads (GET user, GET visit list, half each), 10 % POST visit.
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.mix({
   { 0.45, bench.get_user },
   { 0.45, bench.list_visits },
   { 0.10, bench.post_visit },
})
