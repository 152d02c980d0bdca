//! Overlay attribute escaping, for a view that is the lower layer of an overlay.
//!
//! Overlayfs reads attributes named `<prefix>*` (`trusted.overlay.` as root, `user.overlay.`
//! with `userxattr`) on its layers as its own: opaque directories, redirects, metacopy. A tree
//! may hold such attributes as plain data (a container's layers saved inside a machine), and
//! served as they are they would steer the overlay: hide a directory's other layers, redirect
//! a lookup, claim a file's bytes live elsewhere. Overlayfs reads `<prefix>overlay.X` on a
//! lower layer as the file's own `<prefix>X`, so the view serves every tree attribute
//! `<prefix>X` under that escaped name, and nothing of the tree under an unescaped one. The
//! upper ingest unescapes what the overlay stores the same way (`engine/upper.rs`), so such an
//! attribute survives a checkpoint exactly.

use std::borrow::Cow;

/// What a name asked of the view means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Asked<'a> {
    /// The tree's own attribute of this name.
    Tree(Cow<'a, [u8]>),
    /// The overlay's own attribute: only the view's answers (`data.rs`) may hold it.
    Overlay,
}

/// The escaping of one overlay's attribute prefix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Escape {
    prefix: &'static [u8],
}

const ESCAPED: &[u8] = b"overlay.";

impl Escape {
    pub(crate) fn new(prefix: &'static [u8]) -> Escape {
        Escape { prefix }
    }

    /// The name the tree's attribute `name` is served under.
    pub(crate) fn served<'a>(&self, name: &'a [u8]) -> Cow<'a, [u8]> {
        match name.strip_prefix(self.prefix) {
            Some(rest) => Cow::Owned([self.prefix, ESCAPED, rest].concat()),
            None => Cow::Borrowed(name),
        }
    }

    /// What a request for the attribute `name` asks for.
    pub(super) fn asked<'a>(&self, name: &'a [u8]) -> Asked<'a> {
        let Some(rest) = name.strip_prefix(self.prefix) else {
            return Asked::Tree(Cow::Borrowed(name));
        };
        match rest.strip_prefix(ESCAPED) {
            Some(own) => Asked::Tree(Cow::Owned([self.prefix, own].concat())),
            None => Asked::Overlay,
        }
    }
}

/// The tree's attribute a request asks for, without escaping (an inspection view) or with.
pub(super) fn asked<'a>(escape: Option<Escape>, name: &'a [u8]) -> Asked<'a> {
    match escape {
        Some(e) => e.asked(name),
        None => Asked::Tree(Cow::Borrowed(name)),
    }
}

/// The name a tree attribute is served under, without escaping or with.
pub(super) fn served(escape: Option<Escape>, name: &[u8]) -> Cow<'_, [u8]> {
    match escape {
        Some(e) => e.served(name),
        None => Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Escape = Escape {
        prefix: b"trusted.overlay.",
    };

    fn tree(n: &[u8]) -> Asked<'_> {
        Asked::Tree(Cow::Borrowed(n))
    }

    #[test]
    fn overlay_attributes_of_the_tree_are_served_escaped_and_found_again() {
        for own in [
            &b"trusted.overlay.opaque"[..],
            b"trusted.overlay.redirect",
            b"trusted.overlay.overlay.x",
            b"trusted.overlay.",
        ] {
            let name = T.served(own);
            assert!(name.starts_with(b"trusted.overlay.overlay."), "{name:?}");
            assert_eq!(T.asked(&name), tree(own), "{own:?}");
        }
    }

    #[test]
    fn other_attributes_pass_as_they_are() {
        for n in [
            &b"user.overlay.opaque"[..],
            b"trusted.overlayx",
            b"security.capability",
            b"user.mime",
        ] {
            assert_eq!(T.served(n), Cow::Borrowed(n));
            assert_eq!(T.asked(n), tree(n));
            assert_eq!(asked(None, n), tree(n));
        }
    }

    #[test]
    fn an_unescaped_overlay_name_is_never_the_trees() {
        assert_eq!(T.asked(b"trusted.overlay.metacopy"), Asked::Overlay);
        assert_eq!(T.asked(b"trusted.overlay.opaque"), Asked::Overlay);
        // Without escaping (an inspection view), the tree's attribute is served as it is.
        assert_eq!(
            asked(None, b"trusted.overlay.opaque"),
            tree(b"trusted.overlay.opaque")
        );
        let user = Escape::new(b"user.overlay.");
        assert_eq!(user.asked(b"user.overlay.opaque"), Asked::Overlay);
        assert_eq!(
            user.asked(b"user.overlay.overlay.opaque"),
            tree(b"user.overlay.opaque")
        );
    }
}
