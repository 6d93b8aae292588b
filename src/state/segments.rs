//! The names of a server's shared memory as its state file records them, so that what a killed
//! server leaves can be released (see server/shm.rs, which finds and releases them).

/// What a running server uses; recorded in the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    /// System V shared memory id (not key).
    pub sysv_id: Option<i32>,
    /// Names of POSIX segments in /dev/shm.
    pub posix: Vec<String>,
}

/// `PostgreSQL.` followed by digits: nothing else is ever unlinked.
pub fn is_postgres_segment(name: &str) -> bool {
    name.strip_prefix("PostgreSQL.")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The segments the key=value state file of pgtmp before version 1 records: `sysv_id` and a
/// comma-separated list; names of anything but a server's segments are dropped.
pub fn from_fields(sysv: &str, posix: &str) -> Segments {
    Segments {
        sysv_id: sysv.parse().ok(),
        posix: posix
            .split(',')
            .filter(|n| is_postgres_segment(n))
            .map(str::to_string)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_foreign_names_rejected() {
        let s = Segments {
            sysv_id: Some(42),
            posix: vec!["PostgreSQL.1".into(), "PostgreSQL.22".into()],
        };
        assert_eq!(from_fields("42", "PostgreSQL.1,PostgreSQL.22"), s);
        assert_eq!(
            from_fields("", "../etc,PostgreSQL.x,PostgreSQL.7").posix,
            ["PostgreSQL.7"]
        );
        assert_eq!(from_fields("", "").sysv_id, None);
    }
}
