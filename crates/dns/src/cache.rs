//! Bounded cache of upstream answers.
//!
//! Keyed by (name, type, class); hickory's `Name` compares and hashes
//! case-insensitively, so `Example.COM` and `example.com` share an entry.
//! An entry lives for the smallest TTL of its answers (negative answers: the
//! SOA's `min(ttl, minimum)`, RFC 2308), capped; served records carry their
//! TTL minus the time spent in the cache. When full, the oldest insertion is
//! evicted (FIFO: no bookkeeping on the read path).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::metrics::{CacheMetrics, CacheType};

/// Longest time a positive answer is kept, whatever its TTL says.
pub const MAX_TTL: u32 = 86_400;
/// Longest time a negative answer (NXDOMAIN, NODATA) is kept.
pub const MAX_NEGATIVE_TTL: u32 = 300;

/// What a cached answer is found by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
}

/// One upstream answer as stored.
#[derive(Debug)]
pub struct CachedAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    stored: Instant,
    expires: Instant,
}

impl CachedAnswer {
    /// A positive answer, or a denial (NXDOMAIN, NODATA), as the cache
    /// metrics tell them apart.
    pub fn cache_type(&self) -> CacheType {
        if self.rcode == ResponseCode::NoError && !self.answers.is_empty() {
            CacheType::Success
        } else {
            CacheType::Denial
        }
    }

    /// An uncached view of `msg` (age zero), for answers that are not stored.
    pub fn fresh(msg: Message, now: Instant) -> Self {
        Self {
            rcode: msg.metadata.response_code,
            answers: msg.answers,
            authorities: msg.authorities,
            additionals: msg.additionals,
            stored: now,
            expires: now,
        }
    }

    /// The sections with every TTL lowered by the time spent in the cache.
    pub fn sections_at(&self, now: Instant) -> [Vec<Record>; 3] {
        let age = u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        let aged = |records: &[Record]| {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        [aged(&self.answers), aged(&self.authorities), aged(&self.additionals)]
    }
}

/// How long `msg` may be cached, or `None` if it must not be.
pub fn cache_ttl(msg: &Message) -> Option<u32> {
    if msg.metadata.truncation {
        return None;
    }
    let ttl = match msg.metadata.response_code {
        ResponseCode::NoError if !msg.answers.is_empty() => msg.answers.iter().map(|r| r.ttl).min()?.min(MAX_TTL),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            // RFC 2308 section 5: the SOA's TTL, bounded by its minimum.
            let soa = msg.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?;
            soa.min(MAX_NEGATIVE_TTL)
        }
        _ => return None,
    };
    (ttl > 0).then_some(ttl)
}

/// The cache; shared by all serving tasks.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    answers: Mutex<Answers>,
    metrics: CacheMetrics,
}

/// The answers and their eviction order, under one lock.
#[derive(Debug, Default)]
struct Answers {
    entries: HashMap<CacheKey, (u64, Arc<CachedAnswer>)>,
    /// Insertion order for eviction; may hold stale (re-inserted or
    /// expired) keys, recognised by their sequence number.
    order: VecDeque<(CacheKey, u64)>,
    seq: u64,
}

impl Cache {
    /// A cache of at most `capacity` answers; 0 caches nothing.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, answers: Mutex::new(Answers::default()), metrics: CacheMetrics::new("") }
    }

    /// Counts hits, misses and entries into `metrics` (from empty).
    pub(crate) fn with_metrics(mut self, metrics: CacheMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The live answer for `key`, if any (a cache hit or miss in the metrics,
    /// unless caching is off).
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<CachedAnswer>> {
        if self.capacity == 0 {
            return None;
        }
        let mut answers = self.lock();
        let live = match answers.entries.get(key) {
            Some((_, entry)) if now < entry.expires => Some(entry.clone()),
            Some(_) => {
                if let Some((_, expired)) = answers.entries.remove(key) {
                    self.metrics.removed(expired.cache_type());
                }
                None
            }
            None => None,
        };
        drop(answers);
        match &live {
            Some(hit) => self.metrics.hit(hit.cache_type()),
            None => self.metrics.miss(),
        }
        live
    }

    /// Stores `msg` (an upstream response to `key`) if it is cacheable, and
    /// returns it as an answer either way.
    pub fn insert(&self, key: CacheKey, msg: Message, now: Instant) -> Arc<CachedAnswer> {
        let Some(ttl) = cache_ttl(&msg).filter(|_| self.capacity > 0) else {
            return Arc::new(CachedAnswer::fresh(msg, now));
        };
        let mut answer = CachedAnswer::fresh(msg, now);
        answer.expires = now + Duration::from_secs(u64::from(ttl));
        let answer = Arc::new(answer);
        self.metrics.stored(answer.cache_type());
        let mut answers = self.lock();
        answers.seq += 1;
        let seq = answers.seq;
        match answers.entries.insert(key.clone(), (seq, answer.clone())) {
            Some((_, replaced)) => self.metrics.removed(replaced.cache_type()),
            None => {
                while answers.entries.len() > self.capacity {
                    let Some(evicted) = answers.evict_oldest() else { break };
                    self.metrics.removed(evicted.cache_type());
                }
            }
        }
        answers.order.push_back((key, seq));
        if answers.order.len() > 2 * self.capacity + 16 {
            let Answers { entries, order, .. } = &mut *answers;
            order.retain(|(k, s)| entries.get(k).is_some_and(|(live, _)| live == s));
        }
        answer
    }

    /// Number of stored answers (expired ones included until looked up).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        // The map stays consistent even if a holder panicked: keep serving.
        self.answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Answers {
    /// Removes the oldest live entry and returns it.
    fn evict_oldest(&mut self) -> Option<Arc<CachedAnswer>> {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|(live, _)| *live == seq) {
                return self.entries.remove(&key).map(|(_, evicted)| evicted);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn key(name: &str) -> CacheKey {
        CacheKey { name: Name::from_ascii(name).unwrap(), qtype: RecordType::A, qclass: DNSClass::IN }
    }

    fn answer(ttls: &[u32]) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        for (i, ttl) in ttls.iter().enumerate() {
            let rdata = RData::A(A(Ipv4Addr::new(192, 0, 2, u8::try_from(i).expect("a few answers"))));
            m.add_answer(Record::from_rdata(Name::from_ascii("example.com.").unwrap(), *ttl, rdata));
        }
        m
    }

    fn negative(rcode: ResponseCode, ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        let soa = SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, minimum);
        m.add_authority(Record::from_rdata(Name::from_ascii("com.").unwrap(), ttl, RData::SOA(soa)));
        m
    }

    #[test]
    fn ttl_rules() {
        assert_eq!(cache_ttl(&answer(&[30, 10, 60])), Some(10));
        assert_eq!(cache_ttl(&answer(&[0])), None);
        assert_eq!(cache_ttl(&answer(&[1_000_000])), Some(MAX_TTL));
        assert_eq!(cache_ttl(&negative(ResponseCode::NXDomain, 900, 60)), Some(60));
        assert_eq!(cache_ttl(&negative(ResponseCode::NoError, 30, 60)), Some(30));
        assert_eq!(cache_ttl(&negative(ResponseCode::NXDomain, 86_400, 86_400)), Some(MAX_NEGATIVE_TTL));
        let mut no_soa = answer(&[]);
        no_soa.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(cache_ttl(&no_soa), None);
        let mut servfail = answer(&[30]);
        servfail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&servfail), None);
        let mut truncated = answer(&[30]);
        truncated.metadata.truncation = true;
        assert_eq!(cache_ttl(&truncated), None);
    }

    #[test]
    fn hits_are_case_insensitive_and_age() {
        let cache = Cache::new(10);
        let t0 = Instant::now();
        cache.insert(key("Example.COM."), answer(&[30, 40]), t0);
        let hit = cache.get(&key("example.com."), t0 + Duration::from_secs(12)).expect("hit");
        let [answers, _, _] = hit.sections_at(t0 + Duration::from_secs(12));
        assert_eq!(answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), vec![18, 28]);
        assert!(cache.get(&key("example.com."), t0 + Duration::from_secs(30)).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn type_and_class_are_part_of_the_key() {
        let cache = Cache::new(10);
        let now = Instant::now();
        cache.insert(key("example.com."), answer(&[30]), now);
        let mut aaaa = key("example.com.");
        aaaa.qtype = RecordType::AAAA;
        assert!(cache.get(&aaaa, now).is_none());
        let mut chaos = key("example.com.");
        chaos.qclass = DNSClass::CH;
        assert!(cache.get(&chaos, now).is_none());
    }

    #[test]
    fn bounded_fifo_eviction() {
        let cache = Cache::new(3);
        let now = Instant::now();
        for i in 0..5 {
            cache.insert(key(&format!("n{i}.example.")), answer(&[30]), now);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key("n0.example."), now).is_none());
        assert!(cache.get(&key("n1.example."), now).is_none());
        assert!(cache.get(&key("n4.example."), now).is_some());
        // Re-inserting one key many times neither grows nor evicts others.
        for _ in 0..100 {
            cache.insert(key("n4.example."), answer(&[30]), now);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key("n2.example."), now).is_some());
        assert!(cache.lock().order.len() <= 2 * 3 + 16);
    }

    #[test]
    fn the_entries_gauges_follow_inserts_replacements_evictions_and_expiry() {
        let cache = Cache::new(2).with_metrics(CacheMetrics::new("dns://test"));
        let entries = |kind| cache.metrics.entries(kind);
        let now = Instant::now();
        cache.insert(key("a."), answer(&[30]), now);
        cache.insert(key("b."), negative(ResponseCode::NXDomain, 10, 10), now);
        assert_eq!((entries(CacheType::Success), entries(CacheType::Denial)), (1, 1));
        // Replaced by a denial: one success less.
        cache.insert(key("a."), negative(ResponseCode::NoError, 10, 10), now);
        assert_eq!((entries(CacheType::Success), entries(CacheType::Denial)), (0, 2));
        // Evicts the oldest (b., a denial).
        cache.insert(key("c."), answer(&[5]), now);
        assert_eq!((entries(CacheType::Success), entries(CacheType::Denial)), (1, 1));
        // Expired and looked up: gone.
        assert!(cache.get(&key("c."), now + Duration::from_secs(6)).is_none());
        assert_eq!((entries(CacheType::Success), entries(CacheType::Denial)), (0, 1));
        // Uncacheable answers are no entries.
        cache.insert(key("d."), answer(&[0]), now);
        assert_eq!((entries(CacheType::Success), entries(CacheType::Denial)), (0, 1));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn zero_capacity_and_uncacheable_answers_pass_through() {
        let now = Instant::now();
        let off = Cache::new(0);
        let out = off.insert(key("a."), answer(&[30]), now);
        assert_eq!(out.answers.len(), 1);
        assert!(off.get(&key("a."), now).is_none());
        let cache = Cache::new(4);
        cache.insert(key("a."), answer(&[0]), now);
        assert!(cache.is_empty());
    }
}
