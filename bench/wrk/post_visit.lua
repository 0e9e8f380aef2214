-- wrk scenario: post visit for a random seeded patient. See common.lua for the arguments.
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.post_visit
