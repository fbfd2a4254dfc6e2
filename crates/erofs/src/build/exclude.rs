//! `--exclude` patterns: shell-style globs (`*`, `?`, `[...]`) matched against paths relative
//! to the source root, without a leading `./`. A pattern with no `/` matches any single
//! name at any depth (`*.o`, `.git`); one with a `/` matches the whole relative path
//! (`var/cache/*`); a leading `/` anchors it at the root. `*` and `?` never match `/`.
//! An excluded directory is left out with everything under it.

/// One exclude pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    glob: Vec<u8>,
    whole_path: bool,
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern, String> {
        let p = pattern.strip_prefix("./").unwrap_or(pattern);
        let whole_path = p.contains('/');
        let p = p.trim_start_matches('/').trim_end_matches('/');
        if p.is_empty() {
            return Err(format!("exclude pattern {pattern:?} matches nothing"));
        }
        Ok(Pattern {
            glob: p.as_bytes().to_vec(),
            whole_path,
        })
    }

    /// Whether `path` (relative, `/`-separated) is excluded.
    pub fn matches(&self, path: &[u8]) -> bool {
        if self.whole_path {
            glob(&self.glob, path)
        } else {
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            glob(&self.glob, name)
        }
    }
}

/// Whether any pattern excludes `path`.
pub fn excluded(patterns: &[Pattern], path: &[u8]) -> bool {
    patterns.iter().any(|p| p.matches(path))
}

/// Whether a path given as components, or any directory above it, is excluded (for sources
/// that list paths without walking directories, like tar).
pub fn excluded_or_under(patterns: &[Pattern], comps: &[&[u8]]) -> bool {
    if patterns.is_empty() {
        return false;
    }
    (1..=comps.len()).any(|n| excluded(patterns, &comps[..n].join(&b'/')))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear in practice, never exponential.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' if s[si] != b'/' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, next)) = class(&p[pi..], s[si])
                        && ok
                    {
                        pi += next;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() && p[pi + 1] == s[si] => {
                    pi += 2;
                    si += 1;
                    continue;
                }
                c if c == s[si] && c != b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) if s[ss] != b'/' => {
                star = Some((sp, ss + 1));
                pi = sp + 1;
                si = ss + 1;
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Match a `[...]` class at the start of `p` against `c`: (matched, pattern bytes used).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() && (p[i] != b']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            hit |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((hit != negate && c != b'/', i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let o = Pattern::new("*.o").unwrap();
        assert!(o.matches(b"a/b/c.o"));
        assert!(!o.matches(b"a/b/c.oo"));
        let c = Pattern::new("var/cache/*").unwrap();
        assert!(c.matches(b"var/cache/apt"));
        assert!(!c.matches(b"var/cache/apt/x"));
        assert!(!c.matches(b"x/var/cache/apt"));
        let g = Pattern::new(".git").unwrap();
        assert!(g.matches(b"src/.git"));
        assert!(Pattern::new("/etc").unwrap().matches(b"etc"));
        assert!(Pattern::new("f[0-9]?").unwrap().matches(b"d/f1x"));
        assert!(!Pattern::new("f[!0-9]").unwrap().matches(b"f1"));
        assert!(Pattern::new("").is_err());
        let under = [Pattern::new("cache").unwrap()];
        assert!(excluded_or_under(&under, &[b"var", b"cache", b"x"]));
        assert!(!excluded_or_under(&under, &[b"var", b"caches"]));
    }
}
