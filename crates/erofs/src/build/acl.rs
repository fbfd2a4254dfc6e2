//! POSIX ACLs from tar headers (`SCHILY.acl.access`, `SCHILY.acl.default`, the textual form
//! GNU tar and star write: `user::rwx,user:1000:r-x,group::r-x,mask::r-x,other::r--`,
//! entries separated by `,` or newlines, an optional 4th field with the numeric id) to the
//! binary value of `system.posix_acl_access`/`_default` that the kernel reads: a le32 version
//! (2), then per entry le16 tag, le16 perm, le32 id, sorted by tag then id.

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// Convert a textual ACL to the xattr value. Names that are not numeric ids are an error
/// (resolving them would depend on the build host's user database).
pub fn from_text(text: &str) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(u16, u16, u32)> = Vec::new();
    for raw in text.split([',', '\n']) {
        let e = raw.split('#').next().unwrap_or("").trim();
        if e.is_empty() {
            continue;
        }
        let e = e.strip_prefix("default:").unwrap_or(e);
        let f: Vec<&str> = e.split(':').collect();
        if f.len() < 3 || f.len() > 4 {
            return Err(format!("ACL entry {e:?} is not tag:qualifier:permissions"));
        }
        let tag = match f[0] {
            "user" | "u" => {
                if f[1].is_empty() {
                    USER_OBJ
                } else {
                    USER
                }
            }
            "group" | "g" => {
                if f[1].is_empty() {
                    GROUP_OBJ
                } else {
                    GROUP
                }
            }
            "mask" | "m" => MASK,
            "other" | "o" => OTHER,
            t => return Err(format!("ACL entry {e:?}: unknown tag {t:?}")),
        };
        let id = if tag == USER || tag == GROUP {
            let num = if f.len() == 4 { f[3] } else { f[1] };
            num.parse::<u32>().map_err(|_| {
                format!(
                    "ACL entry {e:?}: {:?} is not a numeric user or group id",
                    f[1]
                )
            })?
        } else {
            UNDEFINED_ID
        };
        let mut perm = 0u16;
        for c in f[2].chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(format!("ACL entry {e:?}: bad permission {c:?}")),
            };
        }
        if entries.iter().any(|&(t, _, i)| t == tag && i == id) {
            return Err(format!("ACL entry {e:?} is repeated"));
        }
        entries.push((tag, perm, id));
    }
    if entries.is_empty() {
        return Err("empty ACL".into());
    }
    entries.sort_by_key(|&(tag, _, id)| (tag, id));
    let mut out = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernel_value_in_the_vectors() {
        // xattr/acl of source-tree.manifest.json.
        let a = from_text("user::rwx\nuser:1234:r-x\ngroup::r-x\nmask::r-x\nother::r-x\n").unwrap();
        assert_eq!(
            hex::encode(a),
            "0200000001000700ffffffff02000500d204000004000500ffffffff10000500ffffffff20000500ffffffff"
        );
        let d = from_text("user::rwx,group::r-x,group:555:rwx,mask::rwx,other::r-x").unwrap();
        assert_eq!(
            hex::encode(d),
            "0200000001000700ffffffff04000500ffffffff080007002b02000010000700ffffffff20000500ffffffff"
        );
        assert!(from_text("user:bob:rwx").is_err());
        assert_eq!(from_text("user:bob:rwx:7,user::r").unwrap().len(), 4 + 16);
    }
}
