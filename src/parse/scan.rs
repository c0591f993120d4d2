//! Byte search for the short values of a log line.
//!
//! Most values are a few to a few dozen bytes (a status, a method, a key id,
//! a path). `memchr` is built for long haystacks: its call, CPU dispatch and
//! setup cost more than scanning such a value, and parsing called it a dozen
//! times a line. Here the first [`SHORT`] bytes are scanned eight at a time
//! in a register (SWAR), and only the rest of a long value goes to `memchr`.

/// Bytes scanned here before handing over to `memchr`.
const SHORT: usize = 64;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The index of the first `c` in `hay`.
#[inline]
pub fn find_byte(c: u8, hay: &[u8]) -> Option<usize> {
    let pattern = LO * c as u64;
    let short = hay.len().min(SHORT);
    let mut i = 0;
    while i + 8 <= short {
        let word = u64::from_le_bytes(hay[i..i + 8].try_into().expect("8 bytes"));
        let x = word ^ pattern;
        // A byte of `x` is zero where `word` holds `c`; the lowest flag set
        // is exact (a borrow can only flag bytes above a real zero).
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if let Some(n) = hay[i..short].iter().position(|&b| b == c) {
        return Some(i + n);
    }
    if hay.len() > SHORT {
        return memchr::memchr(c, &hay[SHORT..]).map(|n| n + SHORT);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_memchr_finds() {
        // Every length around the word and SHORT edges, the byte at every
        // place, with bytes that differ from it by one bit and 0x80.
        for len in 0..=SHORT + 20 {
            for c in [b' ', b'"', b'\\', 0x00, 0x80, 0xff] {
                for fill in [b'a', c ^ 1, c ^ 0x80, c.wrapping_add(1)] {
                    if fill == c {
                        continue;
                    }
                    let mut hay = vec![fill; len];
                    assert_eq!(find_byte(c, &hay), None, "len {len} c {c}");
                    for at in 0..len {
                        hay[at] = c;
                        assert_eq!(find_byte(c, &hay), memchr::memchr(c, &hay));
                        assert_eq!(find_byte(c, &hay), Some(at), "len {len} c {c} at {at}");
                        // A second one later never wins over the first.
                        if at + 1 < len {
                            hay[len - 1] = c;
                            assert_eq!(find_byte(c, &hay), Some(at));
                            hay[len - 1] = fill;
                        }
                        hay[at] = fill;
                    }
                }
            }
        }
    }
}
