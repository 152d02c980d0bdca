//! References to checkpoints: `MACHINE@vN`, `MACHINE@NAME`, `MACHINE@latest`, each optionally
//! followed by `:/path/inside`.

use super::ModelError;

/// Which checkpoint of a machine a reference selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckpointSel {
    Version(u64),
    Name(String),
    Latest,
}

/// A parsed reference. `path` holds the components of the path after `:`, already checked to
/// contain no `..` (an empty list is the root).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ref {
    pub machine: String,
    pub sel: CheckpointSel,
    pub path: Option<Vec<Vec<u8>>>,
}

impl Ref {
    /// Parses `MACHINE@SEL[:/PATH]`. A bare `MACHINE` is rejected here; commands that accept a
    /// bare machine name (meaning its live state) check for `@` themselves.
    pub fn parse(text: &[u8]) -> Result<Ref, ModelError> {
        let shown = || String::from_utf8_lossy(text).into_owned();
        let bad = |reason| {
            Err(ModelError::BadRef {
                text: shown(),
                reason,
            })
        };
        let Some(at) = text.iter().position(|&b| b == b'@') else {
            return bad("expected MACHINE@vN, MACHINE@NAME or MACHINE@latest");
        };
        let machine = std::str::from_utf8(&text[..at]).map_err(|_| ModelError::BadRef {
            text: shown(),
            reason: "machine name is not UTF-8",
        })?;
        validate_machine_name(machine)?;
        let rest = &text[at + 1..];
        let (sel_bytes, path_bytes) = match rest.iter().position(|&b| b == b':') {
            Some(colon) => (&rest[..colon], Some(&rest[colon + 1..])),
            None => (rest, None),
        };
        let sel_text = std::str::from_utf8(sel_bytes).map_err(|_| ModelError::BadRef {
            text: shown(),
            reason: "checkpoint selector is not UTF-8",
        })?;
        let sel = if sel_text == "latest" {
            CheckpointSel::Latest
        } else if let Some(v) = parse_version(sel_text) {
            CheckpointSel::Version(v)
        } else if sel_text.is_empty() {
            return bad("nothing after `@`");
        } else {
            validate_checkpoint_name(sel_text)?;
            CheckpointSel::Name(sel_text.to_owned())
        };
        let path = match path_bytes {
            None => None,
            Some(p) => Some(parse_inner_path(p).map_err(|reason| ModelError::BadRef {
                text: shown(),
                reason,
            })?),
        };
        Ok(Ref {
            machine: machine.to_owned(),
            sel,
            path,
        })
    }
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@", self.machine)?;
        match &self.sel {
            CheckpointSel::Version(v) => write!(f, "v{v}")?,
            CheckpointSel::Name(n) => f.write_str(n)?,
            CheckpointSel::Latest => f.write_str("latest")?,
        }
        if let Some(path) = &self.path {
            f.write_str(":")?;
            if path.is_empty() {
                f.write_str("/")?;
            }
            for c in path {
                write!(f, "/{}", String::from_utf8_lossy(c))?;
            }
        }
        Ok(())
    }
}

/// `vN` with N ≥ 1 and no leading zeros.
fn parse_version(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('v')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Splits an absolute path inside a machine into components, dropping `.` and empty ones and
/// rejecting `..`, so that no reference can name anything outside the machine.
fn parse_inner_path(p: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if p.first() != Some(&b'/') {
        return Err("the path after `:` must start with `/`");
    }
    let mut out = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` is not allowed in a path inside a machine"),
            _ if c.contains(&0) => return Err("the path contains NUL"),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn check_simple_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 64 {
        return Err("longer than 64 characters");
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Machine names: 1–64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_machine_name(name: &str) -> Result<(), ModelError> {
    check_simple_name(name).map_err(|reason| ModelError::BadMachineName {
        name: name.to_owned(),
        reason,
    })
}

/// Checkpoint names: as machine names, and not `latest` or `vN`, which select by version.
pub fn validate_checkpoint_name(name: &str) -> Result<(), ModelError> {
    let bad = |reason| ModelError::BadCheckpointName {
        name: name.to_owned(),
        reason,
    };
    check_simple_name(name).map_err(bad)?;
    if name == "latest" {
        return Err(bad("`latest` always means the newest checkpoint"));
    }
    if name
        .strip_prefix('v')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("names of the form vN are reserved for versions"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let r = Ref::parse(b"web@v12").unwrap();
        assert_eq!(
            (r.machine.as_str(), &r.sel, &r.path),
            ("web", &CheckpointSel::Version(12), &None)
        );
        assert_eq!(
            Ref::parse(b"web@latest").unwrap().sel,
            CheckpointSel::Latest
        );
        assert_eq!(
            Ref::parse(b"web@clean").unwrap().sel,
            CheckpointSel::Name("clean".into())
        );
        let r = Ref::parse(b"web@v1:/etc//./hosts").unwrap();
        assert_eq!(r.path, Some(vec![b"etc".to_vec(), b"hosts".to_vec()]));
        assert_eq!(r.to_string(), "web@v1:/etc/hosts");
        assert_eq!(Ref::parse(b"web@v1:/").unwrap().path, Some(vec![]));
    }

    #[test]
    fn rejects_bad_refs() {
        for bad in [
            &b"web"[..],
            b"@v1",
            b"web@",
            b"web@v1:etc",
            b"web@v1:/../etc",
            b"we b@v1",
            b"web@v01",
            b"-web@v1",
            b"web@na\nme",
        ] {
            assert!(
                Ref::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_machine_name("web-1.prod_x").is_ok());
        assert!(validate_machine_name("").is_err());
        assert!(validate_machine_name("a/b").is_err());
        assert!(validate_machine_name("new\nline").is_err());
        assert!(validate_machine_name(&"a".repeat(65)).is_err());
        assert!(validate_checkpoint_name("clean").is_ok());
        assert!(validate_checkpoint_name("v3").is_err());
        assert!(validate_checkpoint_name("latest").is_err());
        assert!(validate_checkpoint_name("v3a").is_ok());
    }
}
