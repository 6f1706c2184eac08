"""Every Lua script the service runs in Redis, in one place with its KEYS and ARGV (RQ's rq/scripts.py habit).

Why scripts at all: each is a check-then-write that must be atomic across the service's processes (a quota two
concurrent uploads could each pass alone, a slot two concurrent creations could both take). The modules that run
them register them with `conn.register_script` (service/jobs.py, service/registry.py).
"""

# Claim an in-flight slot: add job ARGV[1] (scored by the claim time ARGV[3]) to the sorted set KEYS[1]
# unless it already holds ARGV[2] members. Returns -1 when claimed, else the count.
CLAIM_SLOT = """
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return n end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return -1
"""


# Take `referrer`'s use of blob ARGV[2] (ARGV[3] bytes) for the tenant, charging the tenant when none of
# its records used the blob yet and the store when the blob is not counted yet, unless that goes over
# a quota (ARGV[4] tenant, ARGV[5] store; 0: none). KEYS: refs, size, held, tenant usage, store usage.
# Returns {0, 0} when taken (or already held), {1, tenant usage} or {2, store usage} when refused.
TAKE_BLOB = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {0, 0} end
local size = tonumber(ARGV[3])
local tenant_charge, store_charge = 0, 0
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then tenant_charge = size end
if redis.call('EXISTS', KEYS[2]) == 0 then store_charge = size end
local tenant_used = tonumber(redis.call('GET', KEYS[4]) or '0')
local store_used = tonumber(redis.call('GET', KEYS[5]) or '0')
local tenant_limit, store_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
if tenant_charge > 0 and tenant_limit > 0 and tenant_used + tenant_charge > tenant_limit then return {1, tenant_used} end
if store_charge > 0 and store_limit > 0 and store_used + store_charge > store_limit then return {2, store_used} end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
if tenant_charge > 0 then redis.call('INCRBY', KEYS[4], tenant_charge) end
if store_charge > 0 then
  redis.call('SET', KEYS[2], size)
  redis.call('INCRBY', KEYS[5], store_charge)
end
return {0, 0}
"""
# Drop `referrer`'s use of blob ARGV[2]: the tenant is credited when its last record using the blob goes,
# the store when the last record of all does. Same KEYS as TAKE_BLOB. Returns 1 when no record uses the blob.
# Blobs stored before quotas were counted have no size key and credit nothing.
DROP_BLOB = """
local size = tonumber(redis.call('GET', KEYS[2]) or '-1')
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  local left = redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
  if left <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[2])
    if left == 0 and size >= 0 then redis.call('DECRBY', KEYS[4], size) end
  end
end
if redis.call('SCARD', KEYS[1]) > 0 then return 0 end
if size >= 0 then
  redis.call('DECRBY', KEYS[5], size)
  redis.call('DEL', KEYS[2])
end
return 1
"""
