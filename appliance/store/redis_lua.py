"""The Redis store's server-side scripts: each one step that must be atomic.

Every script takes the key prefix as ``ARGV[1]`` and builds its keys from it
(see the key table in appliance/store/redis.py), so they assume one Redis
server (standalone, or a Sentinel-managed primary), not Redis Cluster. Redis
7 replicates and appends to the AOF what a script *did* (effects
replication), so a script's work is as durable as a plain command's.

Ids: a webhook's ``seq`` comes from one counter (``INCR seq``) and is its
stream entry id ``SEQ-0`` in its tenant's stream, so ``seq`` orders a queue,
is never reused, and names one webhook across tenants.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: The consumer group every tenant stream has; a process's consumer is its name.
GROUP = "relay"

# Shared Lua helpers, prepended to the scripts that use them.
_HELPERS = """
local p = ARGV[1]
local function fieldof(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function mine(owner, me)
  return owner and string.sub(owner, 1, #me + 1) == me .. '|'
end
-- Move a queued entry out of its stream into a retained record (acked or expired),
-- stamped with when (``at``: acked, ``xt``: expired) and indexed by that time: its
-- retention starts then.
local function retire(tenant, id, fields, state, now)
  local q = p .. 'q:' .. tenant
  local seq = string.match(id, '^(%d+)')
  local att = redis.call('HGET', p .. 'att', seq) or '0'
  redis.call('HDEL', p .. 'att', seq)
  redis.call('XACK', q, 'relay', id)
  redis.call('XDEL', q, id)
  redis.call('ZREM', p .. 'rq:' .. tenant, seq)
  local stamp = state == 'delivered' and 'at' or 'xt'
  redis.call('HSET', p .. 'r:' .. seq, 't', tenant, 'st', state, 'a', att, stamp, now,
    unpack(fields))
  redis.call('ZADD', p .. state .. ':' .. tenant, fieldof(fields, 'r'), seq)
  redis.call('ZADD', p .. 'retain:' .. state, now, seq)
end
-- A queue's length and its head's received_at (-1 if empty), appended to out. The
-- head is the entry with the lowest seq, read for its ``r`` field; an empty queue
-- (most of them, while bridges keep up) costs no XRANGE.
local function head(out, tenant)
  local q = p .. 'q:' .. tenant
  local n = redis.call('XLEN', q)
  out[#out + 1] = tenant
  out[#out + 1] = n
  local h = n > 0 and redis.call('XRANGE', q, '-', '+', 'COUNT', 1)[1]
  out[#out + 1] = h and tonumber(fieldof(h[2], 'r')) or -1
end
-- A stored webhook by delivery id: tenant, seq, fields, state, attempts; nil if unknown.
local function lookup(id)
  local ref = redis.call('HGET', p .. 'ids', id)
  if not ref then return nil end
  local tenant, seq = string.match(ref, '^(.*):(%d+)$')
  local e = redis.call('XRANGE', p .. 'q:' .. tenant, seq .. '-0', seq .. '-0')[1]
  if e then
    return tenant, seq, e[2], 'queued', redis.call('HGET', p .. 'att', seq) or '0'
  end
  local rec = redis.call('HGETALL', p .. 'r:' .. seq)
  if #rec == 0 then return nil end
  return tenant, seq, rec, fieldof(rec, 'st'), fieldof(rec, 'a')
end
-- Delete a retained record, its id, and its seq from its tenant's list and the
-- retention index.
local function forget(tenant, state, seq)
  local rec = p .. 'r:' .. seq
  local id = redis.call('HGET', rec, 'i')
  if id then redis.call('HDEL', p .. 'ids', id) end
  redis.call('DEL', rec)
  redis.call('ZREM', p .. state .. ':' .. tenant, seq)
  redis.call('ZREM', p .. 'retain:' .. state, seq)
end
local function ensure_stream(tenant)
  local q = p .. 'q:' .. tenant
  if redis.call('EXISTS', q) == 0 then
    redis.call('XGROUP', 'CREATE', q, 'relay', '0', 'MKSTREAM')
    redis.call('SADD', p .. 'stored', tenant)
  end
  return q
end
"""

# ARGV: prefix, now (ms, the store's clock), dedupe window (ms), queue cap, then per
# webhook: tenant, digest (hex), wire id, body, signature, received_at.
# Returns per webhook: seq and queue length, or 0 0 for a retry within the
# window, or -1 LENGTH for a full queue. The retry check and the XADD are one
# step: of two nodes given the same retry at once, one stores it.
APPEND = """
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 6 do
  local tenant = ARGV[i]
  local dd = p .. 'dd:' .. ARGV[i + 1]
  local seen = redis.call('GET', dd)
  if seen and tonumber(seen) >= now - window then
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local q = p .. 'q:' .. tenant
    local len = redis.call('XLEN', q)
    if len >= cap then
      out[#out + 1] = -1
      out[#out + 1] = len
    else
      ensure_stream(tenant)
      local seq = redis.call('INCR', p .. 'seq')
      redis.call('XADD', q, seq .. '-0', 'i', ARGV[i + 2], 'b', ARGV[i + 3],
        's', ARGV[i + 4], 'r', ARGV[i + 5])
      redis.call('HSET', p .. 'ids', ARGV[i + 2], tenant .. ':' .. seq)
      redis.call('ZADD', p .. 'rq:' .. tenant, ARGV[i + 5], seq)
      redis.call('SET', dd, now, 'PX', math.max(1, window))
      out[#out + 1] = seq
      out[#out + 1] = len + 1
    end
  end
end
return out
"""

# ARGV: prefix, then seqs. One more attempt each.
MARK_SENT = """
for i = 2, #ARGV do redis.call('HINCRBY', p .. 'att', ARGV[i], 1) end
return #ARGV - 1
"""

# ARGV: prefix, now (ms), then tenant and seq pairs. Returns 1 or 0 per ack
# (whether it took a queued webhook out), then tenant, length, head per tenant.
ACK = """
local now = ARGV[2]
local out = {}
local touched = {}
for i = 3, #ARGV, 2 do
  local tenant, id = ARGV[i], ARGV[i + 1] .. '-0'
  local e = redis.call('XRANGE', p .. 'q:' .. tenant, id, id)
  if e[1] then
    retire(tenant, id, e[1][2], 'delivered', now)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  touched[tenant] = true
end
for tenant in pairs(touched) do head(out, tenant) end
return out
"""

# ARGV: prefix, tenant, after (seq), limit, max bytes (-1: none). Returns
# {id, fields, attempts} per queued webhook after ``after``, oldest first; the
# page ends with the webhook whose body reaches max bytes. Read in small
# chunks, so Lua never holds much more than the page.
PENDING = """
local q = p .. 'q:' .. ARGV[2]
local start = '(' .. ARGV[3] .. '-0'
local limit = tonumber(ARGV[4])
local maxb = tonumber(ARGV[5])
local out = {}
local bytes = 0
local done = false
while not done do
  local chunk = redis.call('XRANGE', q, start, '+', 'COUNT', math.min(limit - #out, 32))
  if #chunk == 0 then break end
  for _, e in ipairs(chunk) do
    if #out >= limit or (maxb >= 0 and bytes >= maxb) then done = true break end
    local seq = string.match(e[1], '^(%d+)')
    out[#out + 1] = {e[1], e[2], redis.call('HGET', p .. 'att', seq) or '0'}
    bytes = bytes + #(fieldof(e[2], 'b') or '')
    start = '(' .. e[1]
  end
  if #out >= limit or (maxb >= 0 and bytes >= maxb) then done = true end
end
return out
"""

# ARGV: prefix, now (ms), older than (ms), this process's name, cursor, count,
# budget. Expires the queued webhooks received before ``older than`` (found by
# received_at in ``rq:TENANT``) of one slice of the stored tenants: about
# ``count`` of them, SSCAN from ``cursor``, so that no call walks every tenant
# (Redis serves nobody else while a script runs), and at most ``budget``
# webhooks, so that a mass expiry is cut up too: once the budget is spent the
# rest of the slice is left for the next call, which scans the same slice again
# (its tenants done so far have nothing old left to find). Tenants another live
# process owns are its to expire: its hub is then told. Returns {next cursor,
# 1 if another call is due (else 0: the pass is done), {seq, id, tenant,
# received_at per expired webhook}, {tenant, length, head per queue changed}}.
EXPIRE = """
local now, older, me, cursor = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local budget = tonumber(ARGV[7])
local scan = redis.call('SSCAN', p .. 'stored', cursor, 'COUNT', ARGV[6])
local nextc = scan[1]
local out, heads = {}, {}
local spent = 0
for _, tenant in ipairs(scan[2]) do
  if spent >= budget then break end
  local owner = redis.call('GET', p .. 'owner:' .. tenant)
  if not owner or mine(owner, me) then
    local q = p .. 'q:' .. tenant
    local old = redis.call('ZRANGEBYSCORE', p .. 'rq:' .. tenant, '-inf', '(' .. older,
      'LIMIT', 0, budget - spent)
    for _, seq in ipairs(old) do
      local id = seq .. '-0'
      local e = redis.call('XRANGE', q, id, id)[1]
      if e then
        retire(tenant, id, e[2], 'expired', now)
        out[#out + 1] = {seq, fieldof(e[2], 'i'), tenant, tonumber(fieldof(e[2], 'r'))}
      else
        redis.call('ZREM', p .. 'rq:' .. tenant, seq)
      end
    end
    spent = spent + #old
    if #old > 0 then head(heads, tenant) end
  end
end
-- A spent budget may have left tenants of this slice, or old webhooks of its last
-- tenant: the slice is scanned again, even the first (cursor '0'; the flag says so).
local more = 0
if spent >= budget then
  nextc = cursor
  more = 1
elseif nextc ~= '0' then
  more = 1
end
return {nextc, more, out, heads}
"""

# ARGV: prefix, delivered before (ms), expired before (ms), expired received
# before (ms), at most this many. Deletes the delivered records acked before the
# first and the expired ones that expired before the second, found by those
# times in ``retain:delivered`` and ``retain:expired``: it reads only what it
# deletes. Returns how many, and 1 if another step may find more (this many
# looked at, or records from before the index still to index), else 0.
#
# Records retired before the index existed are only in their tenants' lists
# (by received_at): they are indexed first, once, at most this many a step,
# each list from where the last step left it (``retain:cursors``; then
# ``retain:indexed`` is set): a delivered record by its ack time (every one
# has it), an expired one, which has no expiry time, by receipt plus
# ``expired before`` less ``expired received before`` (when it expired, had the
# relay been running). Indexing a record twice changes nothing.
PRUNE = """
local budget = tonumber(ARGV[5])
local late = tonumber(ARGV[3]) - tonumber(ARGV[4])
-- Index seqs of a list page (seq, received_at, ...) by when their retention began.
local function index(state, page)
  for i = 1, #page, 2 do
    local seq, received = page[i], tonumber(page[i + 1])
    local at = redis.call('HGET', p .. 'r:' .. seq, state == 'delivered' and 'at' or 'xt')
    local since = at and tonumber(at) or (state == 'expired' and received + late or received)
    redis.call('ZADD', p .. 'retain:' .. state, since, seq)
  end
end
-- Index a step of the records from before the index; true if more are left.
local function index_old()
  if redis.call('EXISTS', p .. 'retain:indexed') == 1 then return false end
  local n = 0
  local cursors = p .. 'retain:cursors'
  for _, tenant in ipairs(redis.call('SMEMBERS', p .. 'stored')) do
    for _, state in ipairs({'delivered', 'expired'}) do
      local list = state .. ':' .. tenant
      local from = redis.call('HGET', cursors, list) or '-inf'
      if from ~= 'done' then
        if n >= budget then return true end
        local z = p .. list
        local page = redis.call('ZRANGEBYSCORE', z, from, '+inf', 'WITHSCORES', 'LIMIT', 0,
          budget - n)
        index(state, page)
        n = n + #page / 2
        if n < budget then
          redis.call('HSET', cursors, list, 'done')
        else
          -- The rest of the last page's received_at too: the cursor moves past it.
          local last = page[#page]
          local ties = redis.call('ZRANGEBYSCORE', z, last, last, 'WITHSCORES')
          index(state, ties)
          redis.call('HSET', cursors, list, '(' .. last)
        end
      end
    end
  end
  redis.call('SET', p .. 'retain:indexed', '1')
  redis.call('DEL', cursors)
  return false
end
local indexing = index_old()
local count, seen = 0, 0
for _, state in ipairs({'delivered', 'expired'}) do
  if seen >= budget then break end
  local before = state == 'delivered' and ARGV[2] or ARGV[3]
  local z = p .. 'retain:' .. state
  for _, seq in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. before, 'LIMIT', 0,
      budget - seen)) do
    seen = seen + 1
    local tenant = redis.call('HGET', p .. 'r:' .. seq, 't')
    if tenant then
      forget(tenant, state, seq)
      count = count + 1
    else
      redis.call('ZREM', z, seq)  -- its record is gone already: nothing to count
    end
  end
end
return {count, (indexing or seen >= budget) and 1 or 0}
"""

# ARGV: prefix, tenant, received before (ms; -1: everything). Deletes the
# tenant's webhooks, queued and retained; returns how many were queued, then
# tenant, length, head.
PURGE = """
local tenant, before = ARGV[2], tonumber(ARGV[3])
local q = p .. 'q:' .. tenant
local count = 0
local start = '-'
while true do
  local chunk = redis.call('XRANGE', q, start, '+', 'COUNT', 256)
  if #chunk == 0 then break end
  for _, e in ipairs(chunk) do
    if before < 0 or tonumber(fieldof(e[2], 'r')) < before then
      redis.call('HDEL', p .. 'att', string.match(e[1], '^(%d+)'))
      redis.call('HDEL', p .. 'ids', fieldof(e[2], 'i'))
      redis.call('ZREM', p .. 'rq:' .. tenant, string.match(e[1], '^(%d+)'))
      redis.call('XACK', q, 'relay', e[1])
      redis.call('XDEL', q, e[1])
      count = count + 1
    end
    start = '(' .. e[1]
  end
end
for _, state in ipairs({'delivered', 'expired'}) do
  local z = p .. state .. ':' .. tenant
  local seqs
  if before < 0 then
    seqs = redis.call('ZRANGE', z, 0, -1)
  else
    seqs = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. before)
  end
  for _, seq in ipairs(seqs) do forget(tenant, state, seq) end
end
if before < 0 then
  redis.call('DEL', q)
  redis.call('DEL', p .. 'rq:' .. tenant)
  redis.call('SREM', p .. 'stored', tenant)
end
local out = {count}
head(out, tenant)
return out
"""

# ARGV: prefix, cursor, count. The queue length and head of one slice of the
# stored tenants: about ``count`` of them, SSCAN from ``cursor`` ('0' to start),
# so that no call walks every tenant. Returns {next cursor ('0': the pass is
# done), the tenants' names end to end, per tenant its name's length in bytes,
# its queue's length and head (space-separated)}: three elements a slice, not
# three a tenant, as the relay's client parses each element in Python. SSCAN
# returns every tenant stored throughout a pass at least once (one may come
# twice; one stored or deleted during the pass may be missed), which the caller
# allows for.
HEADS = """
local scan = redis.call('SSCAN', p .. 'stored', ARGV[2], 'COUNT', ARGV[3])
local heads = {}
for _, tenant in ipairs(scan[2]) do head(heads, tenant) end
local names, numbers = {}, {}
for i = 1, #heads, 3 do
  names[#names + 1] = heads[i]
  -- Lua writes a number with 14 significant digits: ms timestamps are exact.
  numbers[#numbers + 1] = #heads[i] .. ' ' .. heads[i + 1] .. ' ' .. heads[i + 2]
end
return {scan[1], table.concat(names), table.concat(numbers, ' ')}
"""

# ARGV: prefix, tenant, this process's name, connected_at (ms), lease ttl (ms),
# mode ('insist': a bridge just connected here, the newest connection anywhere
# wins; 'free': only if nobody holds it). Takes the tenant's lease, then every
# entry pending on another consumer (a dead or former owner) with XAUTOCLAIM,
# and drops consumers left with none. Returns {1, last-delivered-id} or {0}.
CLAIM = """
local tenant, me, connected, ttl, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = p .. 'owner:' .. tenant
local owner = redis.call('GET', key)
if owner and not mine(owner, me) then
  if mode ~= 'insist' then return {0} end
  local theirs = tonumber(string.match(owner, '|(%d+)$'))
  if theirs and theirs > tonumber(connected) then return {0} end
end
redis.call('SET', key, me .. '|' .. connected, 'PX', ttl)
local q = ensure_stream(tenant)
local cursor = '0-0'
repeat
  cursor = redis.call('XAUTOCLAIM', q, 'relay', me, 0, cursor, 'COUNT', 1000, 'JUSTID')[1]
until cursor == '0-0'
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', q, 'relay')) do
  local name, pending = fieldof(c, 'name'), fieldof(c, 'pending')
  if name ~= me and pending == 0 then
    redis.call('XGROUP', 'DELCONSUMER', q, 'relay', name)
  end
end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', q)) do
  if fieldof(g, 'name') == 'relay' then last = fieldof(g, 'last-delivered-id') end
end
redis.call('PUBLISH', p .. 'owners', tenant)
return {1, last}
"""

# ARGV: prefix, this process's name, ttl (ms), then tenants. Per tenant: 1 (the
# lease is ours and renewed), 0 (another process holds it), 2 (nobody does: it
# lapsed, and must be claimed again).
RENEW = """
local me, ttl = ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV do
  local key = p .. 'owner:' .. ARGV[i]
  local owner = redis.call('GET', key)
  if mine(owner, me) then
    redis.call('PEXPIRE', key, ttl)
    out[#out + 1] = 1
  elseif owner then
    out[#out + 1] = 0
  else
    out[#out + 1] = 2
  end
end
return out
"""

# ARGV: prefix, tenant, this process's name. Gives the lease up if it is ours,
# and says so on the owners channel so that a standby connection elsewhere
# takes over at once.
RELEASE = """
local tenant, me = ARGV[2], ARGV[3]
local key = p .. 'owner:' .. tenant
if mine(redis.call('GET', key), me) then
  redis.call('DEL', key)
  redis.call('PUBLISH', p .. 'owners', tenant)
  return 1
end
return 0
"""

# ARGV: prefix, this process's name, count, then tenants. For each tenant this
# process holds the lease of, its new entries from the consumer group (XREADGROUP
# '>', into this process's pending list), with their attempts; for any other,
# 'lost'. Fenced by the lease in one step, so only the owner advances a
# tenant's group: the owner sees every new entry, in order, with no gap.
READ_NEW = """
local me, count = ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV do
  local tenant = ARGV[i]
  if not mine(redis.call('GET', p .. 'owner:' .. tenant), me) then
    out[#out + 1] = {tenant, 'lost'}
  else
    local ok, got = pcall(redis.call, 'XREADGROUP', 'GROUP', 'relay', me, 'COUNT', count,
      'STREAMS', p .. 'q:' .. tenant, '>')
    local entries = {}
    if ok and got and got[1] then
      for _, e in ipairs(got[1][2]) do
        local seq = string.match(e[1], '^(%d+)')
        entries[#entries + 1] = {e[1], e[2], redis.call('HGET', p .. 'att', seq) or '0'}
      end
    end
    out[#out + 1] = {tenant, 'ok', entries}
  end
end
return out
"""


# ARGV: prefix, delivery id. {tenant, seq, state, attempts, fields} or nil.
RECORD = """
local tenant, seq, fields, state, attempts = lookup(ARGV[2])
if not tenant then return nil end
return {tenant, seq, state, attempts, fields}
"""

# ARGV: prefix, tenant ('': every one), state ('': any), limit. Up to ``limit``
# of each tenant's newest webhooks in that state (the caller merges them by
# seq), each {tenant, seq, state, attempts, fields without body and signature, size}.
RECORDS = """
local want, limit = ARGV[3], tonumber(ARGV[4])
local tenants = {ARGV[2]}
if ARGV[2] == '' then tenants = redis.call('SMEMBERS', p .. 'stored') end
local out = {}
local function add(tenant, seq, state, attempts, fields)
  local slim = {}
  for i = 1, #fields, 2 do
    if fields[i] ~= 'b' and fields[i] ~= 's' then
      slim[#slim + 1] = fields[i]
      slim[#slim + 1] = fields[i + 1]
    end
  end
  slim[#slim + 1] = 'size'
  slim[#slim + 1] = #(fieldof(fields, 'b') or '')
  out[#out + 1] = {tenant, seq, state, attempts, slim}
end
for _, tenant in ipairs(tenants) do
  if want == '' or want == 'queued' then
    for _, e in ipairs(redis.call('XREVRANGE', p .. 'q:' .. tenant, '+', '-', 'COUNT', limit)) do
      local seq = string.match(e[1], '^(%d+)')
      add(tenant, seq, 'queued', redis.call('HGET', p .. 'att', seq) or '0', e[2])
    end
  end
  for _, state in ipairs({'delivered', 'expired'}) do
    if want == '' or want == state then
      for _, seq in ipairs(redis.call('ZREVRANGE', p .. state .. ':' .. tenant, 0, limit - 1)) do
        local rec = redis.call('HGETALL', p .. 'r:' .. seq)
        if #rec > 0 then add(tenant, seq, state, fieldof(rec, 'a'), rec) end
      end
    end
  end
end
return out
"""

# ARGV: prefix, received_at (ms), queue cap, n, then n delivery ids and n new
# wire ids. Queues a copy of each (same body and signature, ``p`` = the
# original's id), all or nothing: {'missing', ids...}, {'full', tenant,
# length}, or {'ok', {seq, length, tenant, body, signature} per copy...}. No retry digest: a copy is
# nobody's retry.
REPLAY = """
local now, cap, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local found, missing, wanted = {}, {}, {}
for i = 1, n do
  local tenant, seq, fields = lookup(ARGV[4 + i])
  if not tenant then
    missing[#missing + 1] = ARGV[4 + i]
  else
    found[i] = {tenant, fieldof(fields, 'b'), fieldof(fields, 's')}
    wanted[tenant] = (wanted[tenant] or 0) + 1
  end
end
if #missing > 0 then return {'missing', unpack(missing)} end
for tenant, count in pairs(wanted) do
  local len = redis.call('XLEN', p .. 'q:' .. tenant)
  if len + count > cap then return {'full', tenant, len} end
end
local out = {'ok'}
for i = 1, n do
  local tenant, body, sig = found[i][1], found[i][2], found[i][3]
  local q = ensure_stream(tenant)
  local seq = redis.call('INCR', p .. 'seq')
  local wire = ARGV[4 + n + i]
  redis.call('XADD', q, seq .. '-0', 'i', wire, 'b', body, 's', sig, 'r', now, 'p', ARGV[4 + i])
  redis.call('HSET', p .. 'ids', wire, tenant .. ':' .. seq)
  redis.call('ZADD', p .. 'rq:' .. tenant, now, seq)
  out[#out + 1] = {seq, redis.call('XLEN', q), tenant, body, sig}
end
return out
"""


@dataclass(frozen=True)
class Script:
    """A Lua script with the helpers it needs, and its SHA1 for EVALSHA."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())  # noqa: S324


def _script(body: str) -> Script:
    return Script(_HELPERS + body)


SCRIPTS = {
    name: _script(body)
    for name, body in {
        "append": APPEND,
        "mark_sent": MARK_SENT,
        "ack": ACK,
        "pending": PENDING,
        "expire": EXPIRE,
        "prune": PRUNE,
        "purge": PURGE,
        "heads": HEADS,
        "claim": CLAIM,
        "renew": RENEW,
        "release": RELEASE,
        "read_new": READ_NEW,
        "record": RECORD,
        "records": RECORDS,
        "replay": REPLAY,
    }.items()
}
