//! Cancel keys that name the replica owning them, and the signature on cancels forwarded between
//! replicas. Sans-IO.
//!
//! The layout is PgBouncer's (1.21+), so that pgsluice and PgBouncer peers read each other's keys:
//! of the eight bytes a client gets in BackendKeyData (process id, then secret, big-endian), bytes
//! 1 and 2 carry the owner's peer id (little-endian), and the two low bits of the last byte a TTL,
//! set to 3 and lowered at each forwarding so that a key bounced between misconfigured peers dies.

use crate::proto::startup::PeerCancel;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TTL_MASK: u32 = 0x3;

/// How far a forwarded cancel's clock may be from ours: bounds replays of a captured one.
const FRESH_MS: u64 = 30_000;

/// A fresh key (process id, secret) for a client, from 64 random bits; `owner` 0 leaves it
/// random, as without peering.
pub fn mint(owner: u16, random: u64) -> (u32, u32) {
    let (pid, secret) = ((random >> 32) as u32, random as u32);
    if owner == 0 {
        return (pid, secret);
    }
    let mut p = pid.to_be_bytes();
    [p[1], p[2]] = owner.to_le_bytes();
    (u32::from_be_bytes(p), secret | TTL_MASK)
}

/// The peer id a key names (meaningful only for keys minted with one).
pub fn owner(pid: u32) -> u16 {
    let p = pid.to_be_bytes();
    u16::from_le_bytes([p[1], p[2]])
}

pub fn ttl(secret: u32) -> u32 {
    secret & TTL_MASK
}

/// The key with its TTL lowered by one, for the next hop; `None` when it is spent.
pub fn next_hop(secret: u32) -> Option<u32> {
    (ttl(secret) > 0).then(|| secret - 1)
}

/// What the registry of clients files a key under: with peering, the TTL bits do not count (a
/// forwarded key arrives with fewer).
pub fn lookup(pid: u32, secret: u32, peering: bool) -> u64 {
    let secret = if peering { secret | TTL_MASK } else { secret };
    (u64::from(pid) << 32) | u64::from(secret)
}

fn mac(key: &[u8], pid: u32, secret: u32, sent_ms: u64) -> Hmac<Sha256> {
    let mut m = crate::auth::secret::keyed_hmac(key);
    m.update(b"pgsluice peer cancel\0");
    m.update(&pid.to_be_bytes());
    m.update(&secret.to_be_bytes());
    m.update(&sent_ms.to_be_bytes());
    m
}

/// The tag a peer puts on a forwarded cancel.
pub fn sign(key: &[u8], pid: u32, secret: u32, sent_ms: u64) -> [u8; 32] {
    mac(key, pid, secret, sent_ms)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether a forwarded cancel was signed with `key` (compared in constant time) and sent within
/// [`FRESH_MS`] of `now_ms`.
pub fn verify(key: &[u8], c: &PeerCancel, now_ms: u64) -> bool {
    now_ms.abs_diff(c.sent_ms) <= FRESH_MS
        && mac(key, c.pid, c.secret, c.sent_ms)
            .verify_slice(&c.tag)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_owner_and_a_ttl() {
        for owner in [1u16, 2, 255, 256, 16_383] {
            for random in [0u64, u64::MAX, 0x0123_4567_89ab_cdef] {
                let (pid, secret) = mint(owner, random);
                assert_eq!(super::owner(pid), owner);
                assert_eq!(ttl(secret), 3);
                // The bytes PgBouncer reads: key[1] + key[2] << 8, key[7] & 3.
                let k: Vec<u8> = [pid.to_be_bytes(), secret.to_be_bytes()].concat();
                assert_eq!(u16::from(k[1]) + (u16::from(k[2]) << 8), owner);
                assert_eq!(k[7] & 3, 3);
            }
        }
        assert_eq!(mint(0, 0x1111_2222_3333_4444), (0x1111_2222, 0x3333_4444));
    }

    #[test]
    fn hops_spend_the_ttl_but_not_the_lookup() {
        let (pid, secret) = mint(7, 42 << 8);
        let hop1 = next_hop(secret).unwrap();
        let hop3 = next_hop(next_hop(hop1).unwrap()).unwrap();
        assert_eq!(next_hop(hop3), None);
        assert_eq!(lookup(pid, hop3, true), lookup(pid, secret, true));
        assert_ne!(lookup(pid, hop3, false), lookup(pid, secret, false));
    }

    #[test]
    fn signatures_bind_key_time_and_secret() {
        let now = 1_800_000_000_000;
        let c = PeerCancel {
            pid: 9,
            secret: 10,
            sent_ms: now,
            tag: sign(b"s3cret", 9, 10, now),
        };
        assert!(verify(b"s3cret", &c, now + 1000));
        assert!(!verify(b"other", &c, now));
        assert!(!verify(b"s3cret", &c, now + FRESH_MS + 1), "stale");
        let forged = PeerCancel {
            secret: 11,
            ..c.clone()
        };
        assert!(!verify(b"s3cret", &forged, now));
        let mut bad_tag = c;
        bad_tag.tag[0] ^= 1;
        assert!(!verify(b"s3cret", &bad_tag, now));
    }
}
