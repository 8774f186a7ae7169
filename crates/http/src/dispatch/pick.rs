//! Which endpoints one request tries, in order: the pool's attempt plan
//! (topology, passive health, session affinity, and the strategy's lead
//! among the best-ranked endpoints), with the request's own hash key for
//! `ConsistentHash` and a P2C choice for `LeastRequest`.

use std::net::SocketAddr;

use edgemesh_core::{HashKey, LbStrategy};
use edgemesh_proxy::balance::{self, ewma};
use edgemesh_proxy::pool::{Pool, Targets};
use hyper::HeaderMap;
use hyper::header::COOKIE;

use super::port::PortState;

/// The endpoints (indices into `targets.backends`) a request tries, best
/// first; each at most once. Empty when the port has none.
pub fn order(pool: &Pool, targets: &Targets, headers: &HeaderMap, client: SocketAddr, port: &PortState) -> Vec<usize> {
    let key = match targets.strategy {
        LbStrategy::ConsistentHash => hash_key(&targets.hash_key, headers, client),
        _ => 0,
    };
    let mut order = pool.plan(targets, client.ip(), key);
    if targets.strategy == LbStrategy::LeastRequest && order.len() > 1 && targets.affinity.is_none() {
        let best = best_ranked(pool, targets, &order);
        let addrs = best.iter().map(|&i| targets.backends[i].addr);
        let costs = port.costs(targets, addrs);
        let chosen = best[ewma::p2c(best.len(), port.random(), |k| costs[k])];
        if let Some(at) = order.iter().position(|&i| i == chosen) {
            order[..=at].rotate_right(1);
        }
    }
    order
}

/// The hash of a request for `ConsistentHash`: its header or cookie, or
/// the client's address when it has none (or the key is the address).
pub fn hash_key(key: &HashKey, headers: &HeaderMap, client: SocketAddr) -> u64 {
    let value = match key {
        HashKey::SourceIp => None,
        HashKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => cookie(headers, name),
    };
    match value {
        Some(v) => balance::hash_bytes(v),
        None => balance::hash_ip(client.ip()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265
/// §5.4: `name=value` pairs separated by `; `).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

/// The endpoints of the plan's best rank (the plan is sorted by rank:
/// healthy and preferred, healthy, ejected and preferred, ejected).
fn best_ranked(pool: &Pool, targets: &Targets, order: &[usize]) -> Vec<usize> {
    let ejected = pool.ejected(targets);
    let rank = |i: usize| u8::from(i >= targets.preferred) + 2 * u8::from(ejected.contains(&i));
    let best = rank(order[0]);
    order.iter().copied().take_while(|&i| rank(i) == best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_pairs_and_headers() {
        let h = headers(&[("cookie", "a=1; session=xyz ;b=2"), ("cookie", "other=3")]);
        assert_eq!(cookie(&h, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "other"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "sess"), None, "a prefix is not the name");
        assert_eq!(cookie(&headers(&[]), "session"), None);
    }

    #[test]
    fn a_request_without_its_key_hashes_like_its_client() {
        let client: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let by_ip = balance::hash_ip(client.ip());
        let key = HashKey::Cookie("session".into());
        assert_eq!(hash_key(&key, &headers(&[]), client), by_ip);
        let with = hash_key(&key, &headers(&[("cookie", "session=u1")]), client);
        assert_eq!(with, balance::hash_bytes(b"u1"));
        let header = HashKey::Header("X-User".into());
        assert_eq!(hash_key(&header, &headers(&[("x-user", "u1")]), client), with, "same value, same key");
        assert_eq!(hash_key(&HashKey::SourceIp, &headers(&[("x-user", "u1")]), client), by_ip);
    }
}
