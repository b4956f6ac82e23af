//! The names of shared-data keys: a table's name and a slot number, written without `format!`'s
//! machinery (a DPoP request names three such keys and a decision lookup one).

/// `{prefix}{table}{sep}{n}`.
#[cfg_attr(kcpep_size, optimize(speed))]
pub(crate) fn numbered_key(prefix: &str, table: &str, sep: char, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut key = String::with_capacity(prefix.len() + table.len() + 1 + digits.len() - at);
    key.push_str(prefix);
    key.push_str(table);
    key.push(sep);
    key.extend(digits[at..].iter().map(|&d| char::from(d)));
    key
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_keys_read_as_format_writes_them() {
        for n in [0, 7, 10, 99, 65_535, 1 << 40, u64::MAX] {
            assert_eq!(
                super::numbered_key("kcpep.jti.", "t", '.', n),
                format!("kcpep.jti.t.{n}")
            );
        }
        assert_eq!(
            super::numbered_key("kcpep/v1/dc/", "x", '/', 3),
            "kcpep/v1/dc/x/3"
        );
    }
}
