//! Text keys and distinct values as 128-bit keyed fingerprints.
//!
//! Why: a tracker keyed by the text itself compares the text on every
//! lookup, which reads the key's heap copy: a second cache miss per event.
//! With 40,000 API keys in a replay that was 37 % of the time. A fingerprint
//! sits in the table slot itself.
//!
//! Why it is safe against a hostile client choosing key ids (to have its
//! counts land on a victim's key): each half is SipHash-2-4, a keyed
//! pseudo-random function (its 128-bit output variant: both halves in one
//! pass), under a 128-bit key drawn from the kernel's
//! random source at start. Without those keys, which never leave the
//! process, nobody can construct two texts with the same fingerprint; by
//! chance, two texts share one with probability 2^-128.

use std::hash::Hasher;

/// A text's fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TextKey([u64; 2]);

/// This process's keys, drawn once from the kernel's random source.
fn keys() -> &'static [u64; 4] {
    static KEYS: std::sync::OnceLock<[u64; 4]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = [0u64; 4];
        let want = std::mem::size_of_val(&keys);
        // getrandom(2) does not fail for 32 bytes once the pool is ready.
        let got = unsafe { libc::getrandom(keys.as_mut_ptr() as *mut libc::c_void, want, 0) };
        assert_eq!(got, want as isize, "getrandom failed");
        keys
    })
}

/// The fingerprint of a text: SipHash-2-4 with its 128-bit output, one pass
/// over the text (two 64-bit SipHashes under separate keys took twice as
/// long, and this runs for every event of every text-keyed jail).
pub fn of(bytes: &[u8]) -> TextKey {
    let k = keys();
    let h = siphasher::sip128::SipHasher24::new_with_keys(k[0], k[1]).hash(bytes);
    // Never all zero: that marks a free slot of a `FpTable` (one bit of
    // 128 given up; the first word, which picks the slot, is untouched).
    TextKey([h.h1, h.h2 | 1])
}

/// A region as a distinct value: the country's fingerprint in one half and
/// the subdivision's (0 for none) in the other, so a counter can tell a
/// country alone from a subdivision of it (see `window::DistinctValues`).
/// 64 bits a half: the texts come from the operator's database, not from a
/// client, and a key holds a handful of them.
pub fn nested(parent: &[u8], child: Option<&[u8]>) -> TextKey {
    let k = keys();
    #[allow(deprecated)] // std's SipHasher is SipHash-2-4; deprecated only as a default.
    let half = |k0: u64, k1: u64, bytes: &[u8]| {
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write(bytes);
        h.finish() | 1
    };
    TextKey([
        half(k[0], k[1], parent),
        child.map_or(0, |c| half(k[2], k[3], c)),
    ])
}

impl TextKey {
    /// No text's fingerprint: a free slot of a [`super::fptable::FpTable`].
    pub const EMPTY: TextKey = TextKey([0, 0]);

    /// As bytes (to match evidence lines to their key).
    pub fn bytes(&self) -> [u8; 16] {
        ((self.0[0] as u128) << 64 | self.0[1] as u128).to_be_bytes()
    }

    /// The first word: uniformly spread, picks a table slot.
    pub fn word(&self) -> u64 {
        self.0[0]
    }

    #[cfg(test)]
    pub fn from_words(a: u64, b: u64) -> TextKey {
        TextKey([a, b])
    }

    /// The country half of a [`nested`] value.
    pub fn parent(&self) -> u64 {
        self.0[0]
    }

    /// Whether a [`nested`] value has no subdivision.
    pub fn is_parent_only(&self) -> bool {
        self.0[1] == 0
    }
}

/// An address (already masked to its prefix) as a distinct value: exact, no
/// hashing needed.
pub fn of_addr(masked: u128) -> TextKey {
    TextKey([(masked >> 64) as u64, masked as u64])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SipHash authors' reference vectors for SipHash-2-4 with 128-bit
    /// output (key 00..0f; messages 00, 00 01, ...), as the `siphasher`
    /// crate computes them: the property the fingerprint's claims rest on.
    #[test]
    fn siphash128_matches_the_reference() {
        use siphasher::sip128::{Hasher128, SipHasher24};
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let want: [[u8; 16]; 3] = [
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93,
            ],
            [
                0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b, 0x22,
                0xfc, 0x45,
            ],
            [
                0x81, 0x77, 0x22, 0x8d, 0xa4, 0xa4, 0x5d, 0xc7, 0xfc, 0xa3, 0x8b, 0xde, 0xf6, 0x0a,
                0xff, 0xe4,
            ],
        ];
        for (n, want) in want.iter().enumerate() {
            let msg: Vec<u8> = (0..n as u8).collect();
            let mut h = SipHasher24::new_with_key(&key);
            std::hash::Hasher::write(&mut h, &msg);
            assert_eq!(h.finish128().as_bytes(), *want, "message of {n} bytes");
            // The one-call form `of` uses.
            let whole = SipHasher24::new_with_key(&key).hash(&msg);
            assert_eq!(whole.as_bytes(), *want, "message of {n} bytes, in one call");
        }
    }

    #[test]
    fn same_text_same_key() {
        assert_eq!(of(b"key_a"), of(b"key_a"));
        assert_ne!(of(b"key_a"), of(b"key_b"));
        assert_ne!(of(b""), of(b"\0"));
        assert_ne!(of(b"\x0a\0\0\x01"), of_addr(0x0a00_0001));
    }
}
