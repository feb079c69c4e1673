//! Fleet-wide admission through Redis (`governance.redis`): every sidecar's decision is one
//! Lua script, run atomically by Redis, so N sidecars enforce one limit, not N.
//!
//! Per level (`org`, a team, a key), under one hash tag so a Redis Cluster keeps them on one
//! shard and a script may touch them all:
//! - `…rpm:<level>`: a list of admission times (ms, newest first) — the sliding log;
//! - `…tpm:<level>`: a hash of second → input tokens;
//! - `…b:<level>:<period>`: a hash with the period's `spent` and `reserved` (nano-dollars);
//! - `…r:<level>:<period>`: reservations by id, scored by their expiry (`reservation_ttl`),
//!   with their amounts in `…ra:<level>:<period>`; an expired one (its sidecar died) is
//!   given back by the next decision.
//!
//! Time is Redis's own (`TIME`), so sidecars' clocks never disagree about a window.

use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a decision may wait on Redis before `on_redis_down` applies.
pub const TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed connect, requests fail fast for this long instead of each trying again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
const PREFIX: &str = "switchyard:{gov}:";

const ADMIT: &str = r"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, rid, ttl, life = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local function arg(i, j) return tonumber(ARGV[4 + i * 7 + j]) end
local function key(i, j) return KEYS[i * 5 + j] end
for i = 0, n - 1 do
  local rpm, tpm, tokens = arg(i, 1), arg(i, 2), arg(i, 3)
  if rpm > 0 then
    local k = key(i, 1)
    local len = redis.call('LLEN', k)
    while len > 0 do
      if now - tonumber(redis.call('LINDEX', k, -1)) < 60000 then break end
      redis.call('RPOP', k)
      len = len - 1
    end
    if len >= rpm then
      return {0, i, 'rpm', tonumber(redis.call('LINDEX', k, rpm - 1)) + 60000 - now}
    end
  end
  if tpm > 0 then
    local k = key(i, 2)
    local all = redis.call('HGETALL', k)
    local sum, live = 0, {}
    for j = 1, #all, 2 do
      local s, c = tonumber(all[j]), tonumber(all[j + 1])
      if s + 61 <= sec then redis.call('HDEL', k, all[j]) else
        sum = sum + c
        live[#live + 1] = {s, c}
      end
    end
    if sum + tokens > tpm then
      if tokens > tpm then return {0, i, 'tpm', 60000} end
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local freed = 0
      for _, b in ipairs(live) do
        freed = freed + b[2]
        if sum - freed + tokens <= tpm then return {0, i, 'tpm', (b[1] + 61 - sec) * 1000} end
      end
      return {0, i, 'tpm', 60000}
    end
  end
end
local state = {}
for i = 0, n - 1 do
  local limit, worst, skip, seed = arg(i, 4), arg(i, 5), arg(i, 6), arg(i, 7)
  if limit >= 0 then
    local b, r, a = key(i, 3), key(i, 4), key(i, 5)
    if seed >= 0 then redis.call('HSETNX', b, 'spent', seed) end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', r, '-inf', now)) do
      local amount = redis.call('HGET', a, id)
      if amount then
        redis.call('HINCRBY', b, 'reserved', -tonumber(amount))
        redis.call('HDEL', a, id)
      end
      redis.call('ZREM', r, id)
    end
    local v = redis.call('HMGET', b, 'spent', 'reserved')
    local spent, reserved = tonumber(v[1] or '0'), tonumber(v[2] or '0')
    state[i] = {spent, reserved}
    if skip == 0 and spent + reserved + worst > limit then return {0, i, 'budget', 0} end
  end
end
local out = {1, sec}
for i = 0, n - 1 do
  local rpm, tpm, tokens, limit, worst = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4), arg(i, 5)
  if rpm > 0 then
    redis.call('LPUSH', key(i, 1), now)
    redis.call('LTRIM', key(i, 1), 0, rpm - 1)
    redis.call('PEXPIRE', key(i, 1), 60000)
  end
  if tpm > 0 then
    redis.call('HINCRBY', key(i, 2), sec, tokens)
    redis.call('EXPIRE', key(i, 2), 62)
  end
  if limit >= 0 then
    redis.call('HINCRBY', key(i, 3), 'reserved', worst)
    redis.call('ZADD', key(i, 4), now + ttl, rid)
    redis.call('HSET', key(i, 5), rid, worst)
    for j = 3, 5 do redis.call('EXPIRE', key(i, j), life) end
    out[#out + 1] = state[i][1]
    out[#out + 1] = state[i][2] + worst
  end
end
return out
";

const SETTLE: &str = r"
local n, rid, sec = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for i = 0, n - 1 do
  local est, real, tokens, cost = tonumber(ARGV[4 + i * 4]), tonumber(ARGV[5 + i * 4]), tonumber(ARGV[6 + i * 4]), tonumber(ARGV[7 + i * 4])
  local t, b, r, a = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  if tokens == 1 then
    local cur = redis.call('HGET', t, sec)
    if cur then
      local v = tonumber(cur) + real - est
      if v < 0 then v = 0 end
      redis.call('HSET', t, sec, v)
    end
  end
  if cost >= 0 then
    local amount = redis.call('HGET', a, rid)
    if amount then
      redis.call('HINCRBY', b, 'reserved', -tonumber(amount))
      redis.call('HDEL', a, rid)
      redis.call('ZREM', r, rid)
    end
    out[#out + 1] = redis.call('HINCRBY', b, 'spent', cost)
    out[#out + 1] = tonumber(redis.call('HGET', b, 'reserved') or '0')
  end
end
return out
";

/// Reads budgets without changing them (the collector's `/v1/budgets`): per level, the
/// period's `spent` and the reservations not yet expired.
const READ: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local b, r, a = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local reserved = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', r, '(' .. now, '+inf')) do
    reserved = reserved + tonumber(redis.call('HGET', a, id) or '0')
  end
  out[#out + 1] = tonumber(redis.call('HGET', b, 'spent') or '0')
  out[#out + 1] = reserved
end
return out
";

/// One Redis, its connection made on first use and remade after a failure.
pub struct Fleet {
    pub url: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    failed_at: Mutex<Option<Instant>>,
    admit: Script,
    settle: Script,
    read: Script,
}

/// One level's Redis keys for one budget period, made once and shared by its requests.
pub struct Keys {
    rpm: String,
    tpm: String,
    budget: String,
    reservations: String,
    amounts: String,
}

/// A level's `Keys`, remade when the period changes (formatting five key names for every
/// request cost more than the rest of the decision on the sidecar's side).
#[derive(Default)]
pub struct KeyCache(Mutex<Option<(i64, Arc<Keys>)>>);

impl KeyCache {
    /// `level` is `<kind>:<name>`; `period` the budget period's start (0 without one).
    pub fn get(&self, level: impl Fn() -> String, period: i64) -> Arc<Keys> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, k)) = cached.as_ref() {
            if *p == period {
                return k.clone();
            }
        }
        let keys = Arc::new(Keys::new(&level(), period));
        *cached = Some((period, keys.clone()));
        keys
    }
}

/// `<kind>:<name>`, a level's part of its Redis keys.
pub fn level_id(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

impl Keys {
    /// `level` is `<kind>:<name>`; `period` the budget period's start (0 without one).
    pub fn new(level: &str, period: i64) -> Keys {
        Keys {
            rpm: format!("{PREFIX}rpm:{level}"),
            tpm: format!("{PREFIX}tpm:{level}"),
            budget: format!("{PREFIX}b:{level}:{period}"),
            reservations: format!("{PREFIX}r:{level}:{period}"),
            amounts: format!("{PREFIX}ra:{level}:{period}"),
        }
    }
}

/// What one level asks of the admission script.
pub struct LevelAsk {
    pub keys: Arc<Keys>,
    pub rpm: u32,
    pub tpm: u64,
    pub tokens: u64,
    /// Nano-dollars, or `None` without a budget.
    pub limit: Option<i64>,
    pub worst: i64,
    pub skip: bool,
    /// The collector's figure for the period, set only if Redis has none yet.
    pub seed: Option<i64>,
    /// Seconds the budget keys live (past the period's end).
    pub life: i64,
}

pub enum Answer {
    /// Admitted in second `sec` (Redis's clock); `(spent, reserved)` per level with a
    /// budget, in order.
    Admitted { sec: i64, budgets: Vec<(i64, i64)> },
    /// Level `index` refused it: `rpm`, `tpm` or `budget`, and the wait for a rate limit.
    Refused {
        index: usize,
        what: String,
        wait: Duration,
    },
}

/// What one level's settlement says.
pub struct LevelSettle {
    pub keys: Arc<Keys>,
    pub estimated: u64,
    pub real: u64,
    pub counts_tokens: bool,
    /// Nano-dollars, or `None` without a budget.
    pub cost: Option<i64>,
}

impl Fleet {
    pub fn new(url: &str) -> Result<Fleet, String> {
        let client = redis::Client::open(url).map_err(|e| format!("governance.redis: {e}"))?;
        Ok(Fleet {
            url: url.to_string(),
            client,
            conn: tokio::sync::Mutex::new(None),
            failed_at: Mutex::new(None),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            read: Script::new(READ),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let failed = *self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE) {
            return Err("Redis was unreachable a moment ago".into());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match self.client.get_connection_manager_with_config(config).await {
            Ok(c) => {
                *conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Err(format!("cannot connect to Redis: {e}"))
            }
        }
    }

    /// One admission decision for all levels, atomically.
    pub async fn admit(
        &self,
        rid: &str,
        ttl: Duration,
        levels: &[LevelAsk],
    ) -> Result<Answer, String> {
        let mut con = self.connection().await?;
        let life = levels.iter().map(|l| l.life).max().unwrap_or(86_400);
        let mut call = self.admit.prepare_invoke();
        call.arg(levels.len())
            .arg(rid)
            .arg(ttl.as_millis() as u64)
            .arg(life);
        for l in levels {
            let k = &l.keys;
            call.key(&k.rpm)
                .key(&k.tpm)
                .key(&k.budget)
                .key(&k.reservations)
                .key(&k.amounts);
            call.arg(l.rpm)
                .arg(l.tpm)
                .arg(l.tokens)
                .arg(l.limit.unwrap_or(-1))
                .arg(l.worst)
                .arg(u8::from(l.skip))
                .arg(l.seed.unwrap_or(-1));
        }
        let reply: Vec<redis::Value> = tokio::time::timeout(TIMEOUT, call.invoke_async(&mut con))
            .await
            .map_err(|_| "Redis did not answer in time".to_string())?
            .map_err(|e| format!("Redis: {e}"))?;
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(i)) => Some(*i),
            _ => None,
        };
        match int(reply.first()) {
            Some(1) => Ok(Answer::Admitted {
                sec: int(reply.get(1)).unwrap_or(0),
                budgets: reply[2..]
                    .chunks(2)
                    .map(|c| (int(c.first()).unwrap_or(0), int(c.get(1)).unwrap_or(0)))
                    .collect(),
            }),
            Some(0) => {
                let what = match reply.get(2) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                Ok(Answer::Refused {
                    index: int(reply.get(1)).unwrap_or(0).max(0) as usize,
                    what,
                    wait: Duration::from_millis(int(reply.get(3)).unwrap_or(0).max(0) as u64),
                })
            }
            _ => Err("Redis: unexpected answer from the admission script".into()),
        }
    }

    /// A request ended (or gave up its hold): its reservation becomes its cost.
    /// Returns `(spent, reserved)` per level with a budget, in order.
    pub async fn settle(
        &self,
        rid: &str,
        sec: i64,
        levels: &[LevelSettle],
    ) -> Result<Vec<(i64, i64)>, String> {
        let mut con = self.connection().await?;
        let mut call = self.settle.prepare_invoke();
        call.arg(levels.len()).arg(rid).arg(sec);
        for l in levels {
            let k = &l.keys;
            call.key(&k.tpm)
                .key(&k.budget)
                .key(&k.reservations)
                .key(&k.amounts);
            call.arg(l.estimated)
                .arg(l.real)
                .arg(u8::from(l.counts_tokens))
                .arg(l.cost.unwrap_or(-1));
        }
        pairs(call, &mut con, TIMEOUT).await
    }

    /// `(spent, live reservations)` in nano-dollars for each `(level, period start)`,
    /// where `level` is `<kind>:<name>`; zeros for a level Redis holds nothing of.
    pub async fn read_budgets(&self, levels: &[(String, i64)]) -> Result<Vec<(i64, i64)>, String> {
        if levels.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.connection().await?;
        let mut call = self.read.prepare_invoke();
        for (level, period) in levels {
            let k = Keys::new(level, *period);
            call.key(k.budget).key(k.reservations).key(k.amounts);
        }
        pairs(call, &mut con, Duration::from_secs(2)).await
    }
}

/// Runs a script whose reply is a flat list of integers, read as `(a, b)` pairs.
async fn pairs(
    call: redis::ScriptInvocation<'_>,
    con: &mut ConnectionManager,
    limit: Duration,
) -> Result<Vec<(i64, i64)>, String> {
    let reply: Vec<i64> = tokio::time::timeout(limit, call.invoke_async(con))
        .await
        .map_err(|_| "Redis did not answer in time".to_string())?
        .map_err(|e| format!("Redis: {e}"))?;
    Ok(reply
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or(0)))
        .collect())
}
