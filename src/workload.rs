//! Declared request tags (workloads): the compiled `workloads:` section
//! ([`Declared`]), a request's tags as a small fixed-size value
//! ([`TagSet`]: one byte per declared key, an index into its values), and
//! reading them from the `x-tollgate-tags` header and the body's
//! `metadata` object, bounded and refused with a message naming the tag.
//!
//! Precedence, per tag key: the header, then the body's `metadata`, then
//! the key's `tags`, then its team's. With no tag declared nothing is read
//! and a request pays one length check.

use crate::config::workloads::{is_tag_name, WorkloadsSection, MAX_TAG_KEYS, MAX_TAG_VALUES};
use crate::config::Unknown;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The request header clients set tags with.
pub const HEADER: &str = "x-tollgate-tags";
/// Longest `x-tollgate-tags` value accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024;

/// A value index: no tag.
pub const NONE: u8 = 0;
/// A value index: a value the key does not declare (`unknown: other`).
pub const OTHER: u8 = u8::MAX;

/// One request's tags: per declared key (in `Declared::keys` order) `0`
/// (none), `1..=n` (the n-th declared value) or [`OTHER`]. `Copy`, 8 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TagSet([u8; MAX_TAG_KEYS]);

impl TagSet {
    /// The value index of key `k` ([`NONE`] when unset or out of range).
    pub fn get(&self, k: usize) -> u8 {
        self.0.get(k).copied().unwrap_or(NONE)
    }

    fn set(&mut self, k: usize, v: u8) {
        if let Some(slot) = self.0.get_mut(k) {
            *slot = v;
        }
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|v| *v == NONE)
    }

    /// Each key's value where `self` has none, from `other`.
    fn or(self, other: TagSet) -> TagSet {
        let mut out = self;
        for (mine, theirs) in out.0.iter_mut().zip(other.0) {
            if *mine == NONE {
                *mine = theirs;
            }
        }
        out
    }
}

/// Per key, the value indices a caller (or a route) admits, as bits: bit
/// `v` for value index `v` (bit 0: no tag, always set), bit 63 for
/// [`OTHER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed([u64; MAX_TAG_KEYS]);

impl Default for Allowed {
    fn default() -> Self {
        Allowed([u64::MAX; MAX_TAG_KEYS])
    }
}

fn bit(v: u8) -> u64 {
    if v == OTHER {
        1 << 63
    } else {
        1u64 << (v & 63)
    }
}

impl Allowed {
    /// Whether `v` is allowed for key `k`.
    pub fn admits(&self, k: usize, v: u8) -> bool {
        self.0.get(k).is_none_or(|m| m & bit(v) != 0)
    }

    /// The first key whose value in `tags` is outside this subset.
    pub fn first_outside(&self, tags: &TagSet) -> Option<usize> {
        (0..MAX_TAG_KEYS).find(|&k| !self.admits(k, tags.get(k)))
    }

    /// Only what both allow.
    fn and(self, other: Allowed) -> Allowed {
        let mut out = self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        out
    }
}

/// What a key (with its team) brings to its requests' tags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    /// The key's `tags`, then its team's, where the request sets none.
    pub defaults: TagSet,
    /// The key's and team's `allowed_tags`, together.
    pub allowed: Allowed,
}

/// A key's or team's `tags` and `allowed_tags`, as configured.
pub type CallerTags<'a> = (
    &'a BTreeMap<String, String>,
    &'a BTreeMap<String, Vec<String>>,
);

/// One declared tag key.
#[derive(Debug)]
pub struct TagKey {
    pub name: Arc<str>,
    /// Its values, in config order (value index `i + 1`).
    pub values: Vec<Arc<str>>,
    /// `name=value` for each value index: `none` first, the values, then
    /// `other` (for the usage ledger and limit names).
    pairs: Vec<Arc<str>>,
}

/// The compiled `workloads:` section.
#[derive(Debug, Default)]
pub struct Declared {
    /// The declared keys, sorted by name (their index in a [`TagSet`]).
    pub keys: Vec<TagKey>,
    /// `unknown: other`.
    pub other: bool,
    /// Per metric family (`requests`, `tokens`, `cost`, `duration`,
    /// `ttft`), the indices of the keys it is split by.
    pub metrics: [Vec<usize>; 5],
}

/// Why a request's tags were refused; safe to show the client (it names
/// only the client's own tag, cut short).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagError {
    pub message: String,
    pub param: Option<&'static str>,
}

fn bad(message: String, param: &'static str) -> TagError {
    TagError {
        message,
        param: Some(param),
    }
}

/// Client text echoed in an error, cut to 64 bytes.
fn shown(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Declared {
    /// Compiles a validated section (invalid entries are left out).
    pub fn compile(w: &WorkloadsSection) -> Declared {
        let keys: Vec<TagKey> = w
            .tags
            .iter()
            .take(MAX_TAG_KEYS)
            .map(|(k, values)| {
                let values: Vec<Arc<str>> = values
                    .iter()
                    .take(MAX_TAG_VALUES)
                    .map(|v| Arc::from(v.as_str()))
                    .collect();
                let pairs = std::iter::once("none")
                    .chain(values.iter().map(|v| &**v))
                    .chain(std::iter::once("other"))
                    .map(|v| Arc::from(format!("{k}={v}").as_str()))
                    .collect();
                TagKey {
                    name: Arc::from(k.as_str()),
                    values,
                    pairs,
                }
            })
            .collect();
        let index = |names: &[String]| -> Vec<usize> {
            let mut out: Vec<usize> = names
                .iter()
                .filter_map(|n| keys.iter().position(|k| &*k.name == n.as_str()))
                .collect();
            out.dedup();
            out
        };
        let f = w.metrics.families();
        let metrics = [
            index(f[0].1),
            index(f[1].1),
            index(f[2].1),
            index(f[3].1),
            index(f[4].1),
        ];
        Declared {
            keys,
            other: w.unknown == Unknown::Other,
            metrics,
        }
    }

    /// Whether any tag is declared.
    pub fn active(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The index of tag key `name`.
    pub fn key(&self, name: &str) -> Option<usize> {
        self.keys.iter().position(|k| &*k.name == name)
    }

    /// The value index of `value` for key `k`, if declared.
    pub fn value(&self, k: usize, value: &str) -> Option<u8> {
        let key = self.keys.get(k)?;
        let i = key.values.iter().position(|v| &**v == value)?;
        u8::try_from(i + 1).ok()
    }

    /// `(key, value)` of `tag=value`, both declared.
    pub fn pair(&self, pair: &str) -> Option<(usize, u8)> {
        let (k, v) = pair.split_once('=')?;
        let k = self.key(k)?;
        Some((k, self.value(k, v)?))
    }

    /// The label of value index `v` of key `k`: the value, `none` or `other`.
    pub fn label(&self, k: usize, v: u8) -> &str {
        match v {
            NONE => "none",
            OTHER => "other",
            v => self
                .keys
                .get(k)
                .and_then(|key| key.values.get(usize::from(v) - 1))
                .map_or("none", |s| &**s),
        }
    }

    /// `key=value` of value index `v` of key `k`, shared (never allocates).
    pub fn pair_name(&self, k: usize, v: u8) -> Option<&Arc<str>> {
        let key = self.keys.get(k)?;
        let i = match v {
            OTHER => key.pairs.len().checked_sub(1)?,
            v => usize::from(v),
        };
        key.pairs.get(i)
    }

    /// The value indices of `values` for key `name`, as bits.
    fn mask(&self, values: &[String], k: usize) -> u64 {
        values
            .iter()
            .filter_map(|v| self.value(k, v))
            .fold(bit(NONE), |m, v| m | bit(v))
    }

    /// A subset (`allowed_tags`, a route's `workloads`) as bits; keys it
    /// does not name admit everything.
    pub fn allowed(&self, subset: &BTreeMap<String, Vec<String>>) -> Allowed {
        let mut out = Allowed::default();
        for (name, values) in subset {
            if let Some(k) = self.key(name) {
                out.0[k] = self.mask(values, k);
            }
        }
        out
    }

    /// A route's `workloads`: like [`Declared::allowed`], but a request
    /// without the tag is not admitted either.
    pub fn reserved(&self, subset: &BTreeMap<String, Vec<String>>) -> Allowed {
        let mut out = self.allowed(subset);
        for name in subset.keys() {
            if let Some(k) = self.key(name) {
                out.0[k] &= !bit(NONE);
            }
        }
        out
    }

    /// Tags from a `name: value` map (a key's or team's `tags`).
    pub fn tags(&self, map: &BTreeMap<String, String>) -> TagSet {
        let mut out = TagSet::default();
        for (name, value) in map {
            if let Some(k) = self.key(name) {
                if let Some(v) = self.value(k, value) {
                    out.set(k, v);
                }
            }
        }
        out
    }

    /// A key's [`Caller`], with its team's settings (`team`).
    pub fn caller(&self, key: CallerTags<'_>, team: Option<CallerTags<'_>>) -> Caller {
        let mut defaults = self.tags(key.0);
        let mut allowed = self.allowed(key.1);
        if let Some((tags, subset)) = team {
            defaults = defaults.or(self.tags(tags));
            allowed = allowed.and(self.allowed(subset));
        }
        Caller { defaults, allowed }
    }

    /// The value index of a client's `value` for key `k`: declared, else
    /// [`OTHER`] under `unknown: other`, else an error naming it.
    fn client_value(&self, k: usize, value: &str, param: &'static str) -> Result<u8, TagError> {
        if let Some(v) = self.value(k, value) {
            return Ok(v);
        }
        let name = self.keys.get(k).map_or("", |key| &*key.name);
        if self.other && is_tag_name(value) {
            return Ok(OTHER);
        }
        Err(bad(
            format!(
                "`{}` is not a declared value of the tag `{name}`.",
                shown(value)
            ),
            param,
        ))
    }

    /// The tags of an `x-tollgate-tags` header: `key=value` pairs separated
    /// by commas (spaces around them ignored). Refused: longer than
    /// [`MAX_HEADER_BYTES`], more pairs than declared keys, a pair without
    /// `=`, an undeclared key, a key twice, an undeclared value (unless
    /// `unknown: other`).
    pub fn parse_header(&self, raw: &[u8]) -> Result<TagSet, TagError> {
        const P: &str = HEADER;
        if raw.len() > MAX_HEADER_BYTES {
            return Err(bad(
                format!("The {P} header is longer than {MAX_HEADER_BYTES} bytes."),
                P,
            ));
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(bad(format!("The {P} header is not UTF-8."), P));
        };
        let mut out = TagSet::default();
        let mut pairs = 0usize;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            pairs += 1;
            if pairs > self.keys.len() {
                return Err(bad(
                    format!(
                        "The {P} header sets more than {} tags (the number declared).",
                        self.keys.len()
                    ),
                    P,
                ));
            }
            let Some((name, value)) = part.split_once('=') else {
                return Err(bad(
                    format!("The {P} header's `{}` is not `tag=value`.", shown(part)),
                    P,
                ));
            };
            let (name, value) = (name.trim(), value.trim());
            let Some(k) = self.key(name) else {
                return Err(bad(
                    format!("The tag `{}` is not declared by this gateway.", shown(name)),
                    P,
                ));
            };
            if out.get(k) != NONE {
                return Err(bad(
                    format!("The {P} header sets the tag `{name}` twice."),
                    P,
                ));
            }
            out.set(k, self.client_value(k, value, P)?);
        }
        Ok(out)
    }

    /// The tags in a body's `metadata` value (`body[span]`): each member
    /// named like a declared key must be a string and a declared value
    /// (unless `unknown: other`); other members are the client's own
    /// metadata and are ignored. `null` carries none.
    pub fn parse_metadata(&self, value: &[u8]) -> Result<TagSet, TagError> {
        const P: &str = "metadata";
        let mut out = TagSet::default();
        if value == b"null" {
            return Ok(out);
        }
        if !value.starts_with(b"{") {
            return Err(bad("`metadata` must be an object.".into(), P));
        }
        let mut problem: Option<TagError> = None;
        // Validated as part of the body already; this pass is over the
        // metadata object alone.
        let _ = crate::json_scan::scan(value, crate::rewrite::MAX_DEPTH, |name, span| {
            if problem.is_some() {
                return;
            }
            let Some(k) = self.key(&name) else {
                return;
            };
            let raw = &value[span];
            let text: Option<std::borrow::Cow<'_, str>> = if raw.starts_with(b"\"") {
                if raw.contains(&b'\\') {
                    serde_json::from_slice::<String>(raw).ok().map(Into::into)
                } else {
                    std::str::from_utf8(&raw[1..raw.len().saturating_sub(1)])
                        .ok()
                        .map(Into::into)
                }
            } else {
                None
            };
            let Some(text) = text else {
                problem = Some(bad(
                    format!("`metadata.{name}` must be a string (a tag value)."),
                    P,
                ));
                return;
            };
            if out.get(k) != NONE {
                problem = Some(bad(format!("`metadata` sets the tag `{name}` twice."), P));
                return;
            }
            match self.client_value(k, &text, P) {
                Ok(v) => out.set(k, v),
                Err(e) => problem = Some(e),
            }
        });
        match problem {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A request's tags: the header's, then the body's `metadata`
    /// (`metadata`, the value's bytes), then the caller's defaults;
    /// refused when a value is outside the caller's subset. With no tag
    /// declared: none, and nothing is read.
    pub fn resolve(
        &self,
        header: Option<&[u8]>,
        metadata: Option<&[u8]>,
        caller: &Caller,
    ) -> Result<TagSet, TagError> {
        if self.keys.is_empty() {
            return Ok(TagSet::default());
        }
        let from_header = match header {
            Some(h) => self.parse_header(h)?,
            None => TagSet::default(),
        };
        let from_body = match metadata {
            Some(m) => self.parse_metadata(m)?,
            None => TagSet::default(),
        };
        let tags = from_header.or(from_body).or(caller.defaults);
        if let Some(k) = caller.allowed.first_outside(&tags) {
            let name = self.keys.get(k).map_or("", |key| &*key.name);
            return Err(TagError {
                message: format!(
                    "This key may not use `{}` for the tag `{name}`.",
                    self.label(k, tags.get(k))
                ),
                param: Some(if from_header.get(k) != NONE {
                    HEADER
                } else {
                    "metadata"
                }),
            });
        }
        Ok(tags)
    }

    /// `(key, value)` label pairs of `tags` for the keys that have a value.
    pub fn set_pairs<'a>(&'a self, tags: &'a TagSet) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.keys
            .iter()
            .enumerate()
            .filter(|(k, _)| tags.get(*k) != NONE)
            .map(|(k, key)| (&*key.name, self.label(k, tags.get(k))))
    }

    /// `tags` as `key=value` pairs joined by commas, in declared-key order
    /// (the keys sorted by name), only the keys with a value (`other` for
    /// an undeclared value under `unknown: other`); empty when none. What a
    /// capture row records in its `tags` column.
    pub fn tag_string(&self, tags: &TagSet) -> String {
        let mut out = String::new();
        for (k, v) in self.set_pairs(tags) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }
}

/// `body` (a JSON object, already validated) with `tags` written in as
/// `mode` says (`forward_tags` of the route): as string members of its
/// `metadata` (created when absent or `null`; a member named like a tag
/// replaced, the others kept) or as its `user` when it has none. Every byte
/// outside the edited member is the client's. The body unchanged (no copy)
/// when there is nothing to write.
pub fn forward(
    body: &bytes::Bytes,
    mode: crate::config::ForwardTags,
    declared: &Declared,
    tags: &TagSet,
) -> bytes::Bytes {
    use crate::config::ForwardTags;
    if mode == ForwardTags::None || tags.is_empty() {
        return body.clone();
    }
    let field = match mode {
        ForwardTags::Metadata => "metadata",
        _ => "user",
    };
    let mut span = None;
    let _ = crate::json_scan::scan(body, crate::rewrite::MAX_DEPTH, |k, v| {
        if k == field {
            span = Some(v);
        }
    });
    let value = match mode {
        ForwardTags::Metadata => {
            let mut map = span
                .clone()
                .and_then(|r| body.get(r))
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b).ok()
                })
                .unwrap_or_default();
            for (k, v) in declared.set_pairs(tags) {
                map.insert(k.to_string(), serde_json::Value::from(v));
            }
            serde_json::Value::Object(map).to_string()
        }
        _ => {
            if span.is_some() {
                // The client's own `user` is kept.
                return body.clone();
            }
            let text: Vec<String> = declared
                .set_pairs(tags)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            serde_json::Value::from(text.join(",")).to_string()
        }
    };
    let mut out = Vec::with_capacity(body.len() + value.len() + field.len() + 4);
    match span {
        Some(r) => {
            out.extend_from_slice(&body[..r.start]);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(&body[r.end..]);
        }
        None => {
            // A new first member, right after the opening brace.
            let at = body.iter().position(|b| *b == b'{').map_or(0, |i| i + 1);
            let empty = body[at..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'}');
            out.extend_from_slice(&body[..at]);
            out.push(b'"');
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value.as_bytes());
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(&body[at..]);
        }
    }
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn declared(unknown: &str) -> Declared {
        let yaml = format!(
            "tags: {{ use_case: [summarize, support, batch, eval], priority: [interactive, background] }}\nunknown: {unknown}\n"
        );
        let w: WorkloadsSection = serde_yaml::from_str(&yaml).unwrap();
        Declared::compile(&w)
    }

    #[test]
    fn the_header_sets_declared_tags_and_refuses_the_rest() {
        let d = declared("reject");
        let (p, u) = (d.key("priority").unwrap(), d.key("use_case").unwrap());
        let t = d
            .parse_header(b" use_case=batch , priority=background")
            .unwrap();
        assert_eq!(d.label(u, t.get(u)), "batch");
        assert_eq!(d.label(p, t.get(p)), "background");
        assert_eq!(d.parse_header(b"").unwrap(), TagSet::default());
        for (raw, says) in [
            (
                &b"use_case=nope"[..],
                "`nope` is not a declared value of the tag `use_case`",
            ),
            (b"team=x", "The tag `team` is not declared"),
            (
                b"use_case=batch,use_case=eval",
                "sets the tag `use_case` twice",
            ),
            (b"use_case", "is not `tag=value`"),
            (
                b"use_case=batch,priority=background,use_case=eval",
                "more than 2 tags",
            ),
        ] {
            let e = d.parse_header(raw).unwrap_err();
            assert!(
                e.message.contains(says),
                "{}: {}",
                String::from_utf8_lossy(raw),
                e.message
            );
            assert_eq!(e.param, Some(HEADER));
        }
        let long = vec![b'a'; MAX_HEADER_BYTES + 1];
        assert!(d
            .parse_header(&long)
            .unwrap_err()
            .message
            .contains("longer than 1024"));
    }

    #[test]
    fn unknown_other_maps_undeclared_values_to_other() {
        let d = declared("other");
        let u = d.key("use_case").unwrap();
        let t = d.parse_header(b"use_case=whatever").unwrap();
        assert_eq!(t.get(u), OTHER);
        assert_eq!(d.label(u, OTHER), "other");
        assert_eq!(&**d.pair_name(u, OTHER).unwrap(), "use_case=other");
        assert_eq!(&**d.pair_name(u, NONE).unwrap(), "use_case=none");
        // An undeclared key is refused all the same.
        assert!(d.parse_header(b"team=x").is_err());
    }

    #[test]
    fn metadata_reads_declared_keys_and_leaves_the_rest() {
        let d = declared("reject");
        let u = d.key("use_case").unwrap();
        let t = d
            .parse_metadata(br#"{"user_ref":"x","use_case":"sum\u006darize","n":3}"#)
            .unwrap();
        assert_eq!(d.label(u, t.get(u)), "summarize");
        assert!(d.parse_metadata(b"null").unwrap().is_empty());
        assert!(d.parse_metadata(br#"{"use_case":3}"#).is_err());
        assert!(d.parse_metadata(br#"{"use_case":"x"}"#).is_err());
        assert!(d.parse_metadata(b"[1]").is_err());
    }

    #[test]
    fn the_header_wins_over_metadata_and_both_over_defaults() {
        let d = declared("reject");
        let (p, u) = (d.key("priority").unwrap(), d.key("use_case").unwrap());
        let mut tags = BTreeMap::new();
        tags.insert("priority".to_string(), "background".to_string());
        tags.insert("use_case".to_string(), "eval".to_string());
        let caller = d.caller((&tags, &BTreeMap::new()), None);
        let t = d
            .resolve(
                Some(b"use_case=batch"),
                Some(br#"{"use_case":"support","priority":"interactive"}"#),
                &caller,
            )
            .unwrap();
        assert_eq!(d.label(u, t.get(u)), "batch");
        assert_eq!(d.label(p, t.get(p)), "interactive");
        let t = d.resolve(None, None, &caller).unwrap();
        assert_eq!(d.label(u, t.get(u)), "eval");
    }

    #[test]
    fn a_subset_refuses_values_outside_it() {
        let d = declared("other");
        let mut subset = BTreeMap::new();
        subset.insert("use_case".to_string(), vec!["batch".to_string()]);
        let caller = d.caller((&BTreeMap::new(), &subset), None);
        assert!(d.resolve(Some(b"use_case=batch"), None, &caller).is_ok());
        assert!(d.resolve(None, None, &caller).is_ok(), "no tag is allowed");
        let e = d
            .resolve(Some(b"use_case=eval"), None, &caller)
            .unwrap_err();
        assert_eq!(
            e.message,
            "This key may not use `eval` for the tag `use_case`."
        );
        let e = d.resolve(Some(b"use_case=zzz"), None, &caller).unwrap_err();
        assert!(e.message.contains("`other`"), "{}", e.message);
        // A route's reservation does not admit a request without the tag.
        let r = d.reserved(&subset);
        let u = d.key("use_case").unwrap();
        assert!(!r.admits(u, NONE));
        assert!(r.admits(u, d.value(u, "batch").unwrap()));
    }

    #[test]
    fn the_tag_string_lists_set_keys_in_declared_order() {
        let d = declared("other");
        let t = d
            .parse_header(b"use_case=batch,priority=interactive")
            .unwrap();
        assert_eq!(d.tag_string(&t), "priority=interactive,use_case=batch");
        let t = d.parse_header(b"use_case=whatever").unwrap();
        assert_eq!(d.tag_string(&t), "use_case=other");
        assert_eq!(d.tag_string(&TagSet::default()), "");
        assert_eq!(Declared::default().tag_string(&t), "");
    }

    #[test]
    fn nothing_declared_reads_nothing() {
        let d = Declared::default();
        let t = d
            .resolve(Some(b"anything=goes,,,"), Some(b"{"), &Caller::default())
            .unwrap();
        assert!(t.is_empty());
        assert_eq!(std::mem::size_of::<TagSet>(), 8);
    }

    #[test]
    fn forwarding_writes_tags_into_metadata_or_user_only_when_asked() {
        use crate::config::ForwardTags;
        let d = declared("reject");
        let tags = d
            .parse_header(b"use_case=batch,priority=interactive")
            .unwrap();
        let body = bytes::Bytes::from_static(
            br#"{"model":"m","metadata":{"order":"7","use_case":"x"},"n":1}"#,
        );
        assert_eq!(forward(&body, ForwardTags::None, &d, &tags), body);
        assert_eq!(
            forward(&body, ForwardTags::Metadata, &d, &TagSet::default()),
            body
        );
        let out = forward(&body, ForwardTags::Metadata, &d, &tags);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["metadata"],
            serde_json::json!({"order": "7", "use_case": "batch", "priority": "interactive"})
        );
        assert_eq!(v["n"], 1);
        let out = forward(&body, ForwardTags::User, &d, &tags);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user"], "priority=interactive,use_case=batch");
        // The client's own `user` stays; an empty object gets a member.
        let with_user = bytes::Bytes::from_static(br#"{"user":"u1","model":"m"}"#);
        assert_eq!(forward(&with_user, ForwardTags::User, &d, &tags), with_user);
        let bare = bytes::Bytes::from_static(b"{ }");
        let out = forward(&bare, ForwardTags::Metadata, &d, &tags);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["use_case"], "batch");
    }

    proptest::proptest! {
        #[test]
        fn the_header_parser_never_panics_and_stays_bounded(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..1500)) {
            for d in [declared("reject"), declared("other")] {
                match d.parse_header(&raw) {
                    Ok(t) => {
                        proptest::prop_assert!(raw.len() <= MAX_HEADER_BYTES);
                        for k in 0..MAX_TAG_KEYS {
                            let v = t.get(k);
                            proptest::prop_assert!(k < d.keys.len() || v == NONE);
                            proptest::prop_assert!(v == NONE || v == OTHER || usize::from(v) <= d.keys[k].values.len());
                        }
                    }
                    Err(e) => proptest::prop_assert!(e.message.len() < 300),
                }
            }
        }

        #[test]
        fn header_pairs_read_back(use_case in 0usize..5, priority in 0usize..3, spaces in 0usize..3) {
            let d = declared("reject");
            let uc = ["", "summarize", "support", "batch", "eval"][use_case];
            let pr = ["", "interactive", "background"][priority];
            let pad = " ".repeat(spaces);
            let mut parts = Vec::new();
            if !uc.is_empty() { parts.push(format!("{pad}use_case={uc}{pad}")); }
            if !pr.is_empty() { parts.push(format!("priority={pr}")); }
            let t = d.parse_header(parts.join(",").as_bytes()).unwrap();
            let (u, p) = (d.key("use_case").unwrap(), d.key("priority").unwrap());
            proptest::prop_assert_eq!(d.label(u, t.get(u)), if uc.is_empty() { "none" } else { uc });
            proptest::prop_assert_eq!(d.label(p, t.get(p)), if pr.is_empty() { "none" } else { pr });
        }
    }
}
