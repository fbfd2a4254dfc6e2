//! A tar source: the members [`super::tar`] reads become the tree. File content is written
//! to the image's data area as it streams by (hashed on a second thread), so memory stays
//! bounded by a few buffers plus each file's inline tail. Hardlinks, devices, fifos, PAX
//! xattrs and ACLs are kept; `..` components, absolute paths, names over 255 bytes, sizes
//! beyond what the image can address, symlink targets over 4095 bytes and hardlinks to
//! paths not seen before are refused with the member's byte offset.
//!
//! With [`Options::oci_layer`], OCI whiteouts become the overlayfs form: `.wh.NAME` → a 0/0
//! character device `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory.

use super::file_data;
use super::tar::{Entry, TarReader, decompress, pad};
use super::tree::{Content, Kind, Node, NodeId, Stored, Tree, encode_dev};
use super::xattrs::max_ibody_size;
use super::{BuildError, ImageFile, Options, Progress};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// What to do with OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whiteouts {
    /// Ordinary names.
    Keep,
    /// The overlayfs form: a 0/0 character device, `trusted.overlay.opaque=y`.
    Overlay,
    /// Applied to the layers below, as the OCI image spec says: `.wh.NAME` removes NAME,
    /// `.wh..wh..opq` empties its directory of what lower layers put there.
    Apply,
}

/// Read a tar stream into a tree, storing file content in `img`.
pub fn read(
    input: Box<dyn Read + Send>,
    opts: &Options,
    img: &ImageFile,
    progress: &dyn Progress,
) -> Result<Tree, BuildError> {
    let mode = if opts.oci_layer {
        Whiteouts::Overlay
    } else {
        Whiteouts::Keep
    };
    let once = std::iter::once(Ok(Layer { label: None, input }));
    let tree = read_layers(once, mode, Pass::Store, opts, img, progress)?.0;
    // A plain tar of an OCI image is read as one (see `oci::detect`); a compressed one
    // cannot be, and an image of its blobs is of no use.
    let root = tree.entries(0).expect("the root is a directory");
    if mode == Whiteouts::Keep
        && root.contains_key(&b"blobs"[..])
        && (root.contains_key(&b"manifest.json"[..])
            || (root.contains_key(&b"oci-layout"[..]) && root.contains_key(&b"index.json"[..])))
    {
        return Err(BuildError::Source(
            "the tar holds an OCI image layout or a docker save archive, compressed or on \
             stdin: give it as a plain tar file (or a directory) to build the image it holds"
                .into(),
        ));
    }
    Ok(tree)
}

/// Flatten `count` layers (`open(i)` gives layer `i`, bottom first), whiteouts applied. Two
/// passes: the first reads only the metadata and finds which members' content survives the
/// layers above; the second stores just that content, so replaced and deleted files leave no
/// dead blocks in the image.
pub(crate) fn flatten(
    count: usize,
    open: &dyn Fn(usize) -> Result<Layer, BuildError>,
    opts: &Options,
    img: &ImageFile,
    progress: &dyn Progress,
) -> Result<Tree, BuildError> {
    let (_, keep) = read_layers(
        (0..count).map(open),
        Whiteouts::Apply,
        Pass::Plan,
        opts,
        img,
        progress,
    )?;
    let pass = Pass::Keep(keep);
    Ok(read_layers(
        (0..count).map(open),
        Whiteouts::Apply,
        pass,
        opts,
        img,
        progress,
    )?
    .0)
}

/// Which file contents a pass stores.
pub(crate) enum Pass {
    /// All.
    Store,
    /// None: only find the members (layer, member number) whose content the tree keeps.
    Plan,
    /// Those members'.
    Keep(HashSet<(usize, u64)>),
}

/// One tar stream of a stack.
pub(crate) struct Layer {
    /// How errors name the layer (`None`: a lone tar, errors give only the byte offset).
    pub(crate) label: Option<String>,
    pub(crate) input: Box<dyn Read + Send>,
}

/// Read tar streams one over the other into one tree. A labelled layer is read to its end
/// after the end-of-archive marker, so that a verifying reader sees every byte.
/// Also returns, for [`Pass::Plan`], the members whose content the tree keeps.
pub(crate) fn read_layers(
    layers: impl IntoIterator<Item = Result<Layer, BuildError>>,
    mode: Whiteouts,
    pass: Pass,
    opts: &Options,
    img: &ImageFile,
    progress: &dyn Progress,
) -> Result<(Tree, HashSet<(usize, u64)>), BuildError> {
    let plan = matches!(pass, Pass::Plan);
    let mut b = Builder {
        tree: Tree::new(),
        opts,
        hash: (opts.fingerprint.is_some() && !plan).then(HashPipe::start),
        pass,
        at: (0, 0),
        origins: HashMap::new(),
        hashed: Vec::new(),
        mode,
        upper: HashSet::new(),
    };
    b.tree.nodes[0].mtime = opts.build_time as i64;
    for (layer_no, layer) in layers.into_iter().enumerate() {
        let Layer { label, input } = layer?;
        let in_layer = |e: BuildError| match (&label, e) {
            (Some(l), BuildError::Tar { offset, msg }) => {
                BuildError::Source(format!("{l}, tar byte {offset}: {msg}"))
            }
            (Some(l), BuildError::Source(msg)) => BuildError::Source(format!("{l}: {msg}")),
            (_, e) => e,
        };
        let mut tar = TarReader {
            r: decompress(input).map_err(|e| {
                in_layer(BuildError::Tar {
                    offset: 0,
                    msg: format!("reading: {e}"),
                })
            })?,
            pos: 0,
            pending: 0,
            header_at: 0,
            global: BTreeMap::new(),
        };
        b.upper.clear();
        let mut entries = || -> Result<(), BuildError> {
            let mut member = 0;
            while let Some(e) = tar.next_entry()? {
                b.at = (layer_no, member);
                member += 1;
                let at = tar.header_at;
                let fail = |msg: String| BuildError::Tar { offset: at, msg };
                b.apply(e, &mut tar, img, progress).map_err(|e| match e {
                    BuildError::Source(msg) => fail(msg),
                    other => other,
                })?;
            }
            Ok(())
        };
        let result = entries();
        if label.is_some() {
            // Read to the end: a verifying reader checks digests there. A layer that fails to
            // parse is read on too, so that a corrupt blob is reported as one.
            let drained = std::io::copy(&mut tar.r, &mut std::io::sink());
            match (result, drained) {
                (Err(e), Err(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::debug!("layer error {e} comes from a blob that fails verification");
                    return Err(in_layer(BuildError::Source(io.to_string())));
                }
                (Err(e), _) => return Err(in_layer(e)),
                (Ok(()), Err(io)) => {
                    return Err(in_layer(BuildError::Tar {
                        offset: tar.pos,
                        msg: format!("after the end-of-archive marker: {io}"),
                    }));
                }
                (Ok(()), Ok(_)) => {}
            }
        } else {
            result?;
        }
    }
    if let Some(pipe) = b.hash.take() {
        let values = pipe.finish()?;
        for (id, value) in b.hashed.iter().zip(values) {
            if let Kind::File {
                content: Content::Stored(s),
                ..
            } = &mut b.tree.nodes[*id].kind
            {
                s.fingerprint = Some(value);
            }
        }
    }
    let keep = if plan {
        b.tree
            .bfs()
            .iter()
            .filter_map(|(id, _)| b.origins.get(id).copied())
            .collect()
    } else {
        HashSet::new()
    };
    Ok((b.tree, keep))
}

/// Fingerprints computed beside the tar reader: the reader hands each file's bytes to a
/// hashing thread over a bounded channel, so reading and writing run alongside SHA-256.
struct HashPipe {
    tx: std::sync::mpsc::SyncSender<Chunk>,
    worker: std::thread::JoinHandle<Vec<crate::fingerprint::Value>>,
}

enum Chunk {
    Data(Vec<u8>),
    /// The end of one file's content.
    End,
}

impl HashPipe {
    fn start() -> HashPipe {
        use sha2::Digest;
        // At most this many chunks (each at most one read) wait: bounded memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(16);
        let worker = std::thread::spawn(move || {
            let mut values = Vec::new();
            let mut h = sha2::Sha256::new();
            for c in rx {
                match c {
                    Chunk::Data(d) => h.update(&d),
                    Chunk::End => values.push(crate::fingerprint::value_of_digest(
                        &std::mem::take(&mut h).finalize().into(),
                    )),
                }
            }
            values
        });
        HashPipe { tx, worker }
    }

    fn finish(self) -> Result<Vec<crate::fingerprint::Value>, BuildError> {
        drop(self.tx);
        self.worker
            .join()
            .map_err(|_| BuildError::Source("the hashing thread failed".into()))
    }
}

/// A reader that also sends what it reads to the hashing thread.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    tx: &'a std::sync::mpsc::SyncSender<Chunk>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.tx
                .send(Chunk::Data(buf[..n].to_vec()))
                .map_err(|_| std::io::Error::other("the hashing thread ended"))?;
        }
        Ok(n)
    }
}

/// Split and check a member path: relative, no `..`, names of at most 255 bytes.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.first() == Some(&b'/') {
        return Err(format!("absolute path {:?} in archive", shown()));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(format!("path {:?} leaves the archive root (..)", shown())),
            c if c.len() > crate::format::NAME_LEN => {
                return Err(format!(
                    "path {:?} has a name longer than 255 bytes",
                    shown()
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

struct Builder<'a> {
    tree: Tree,
    opts: &'a Options,
    hash: Option<HashPipe>,
    /// Nodes whose content went through `hash`, in order.
    hashed: Vec<NodeId>,
    mode: Whiteouts,
    pass: Pass,
    /// The member being applied: (layer, member number).
    at: (usize, u64),
    /// [`Pass::Plan`]: the member each file node came from.
    origins: HashMap<NodeId, (usize, u64)>,
    /// Entries (directory, name) the current layer made (for [`Whiteouts::Apply`]: whiteouts
    /// hide only what lower layers made).
    upper: HashSet<(NodeId, Vec<u8>)>,
}

impl Builder<'_> {
    /// The directory for `comps`, creating missing ones (mode 0755, root-owned).
    fn dir(&mut self, comps: &[&[u8]]) -> Result<NodeId, BuildError> {
        let mut cur = 0;
        for (i, c) in comps.iter().enumerate() {
            let next = self.tree.entries(cur).and_then(|e| e.get(*c).copied());
            cur = match next {
                Some(id) if self.tree.nodes[id].is_dir() => id,
                Some(_) => {
                    return Err(BuildError::Source(format!(
                        "{:?} is not a directory",
                        String::from_utf8_lossy(&comps[..=i].join(&b'/'))
                    )));
                }
                None => {
                    let mut n = Node::new(Kind::Dir(BTreeMap::new()), 0o755);
                    n.mtime = self.opts.build_time as i64;
                    let id = self.tree.add(n);
                    self.insert(cur, c, id);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// Name `id` `name` in `dir`, replacing what was there.
    fn insert(&mut self, dir: NodeId, name: &[u8], id: NodeId) {
        self.tree
            .entries_mut(dir)
            .expect("a directory")
            .insert(name.to_vec(), id);
        if self.mode == Whiteouts::Apply {
            self.upper.insert((dir, name.to_vec()));
        }
    }

    /// Remove from `dir`, recursively, every entry the current layer did not make.
    fn make_opaque(&mut self, dir: NodeId) {
        let entries: Vec<(Vec<u8>, NodeId)> = match self.tree.entries(dir) {
            Some(e) => e.iter().map(|(k, &v)| (k.clone(), v)).collect(),
            None => return,
        };
        for (name, id) in entries {
            if !self.upper.contains(&(dir, name.clone())) {
                self.tree
                    .entries_mut(dir)
                    .expect("a directory")
                    .remove(&name);
            } else if self.tree.nodes[id].is_dir() {
                self.make_opaque(id);
            }
        }
    }

    fn lookup(&self, comps: &[&[u8]]) -> Option<NodeId> {
        let mut cur = 0;
        for c in comps {
            cur = *self.tree.entries(cur)?.get(*c)?;
        }
        Some(cur)
    }

    fn apply(
        &mut self,
        e: Entry,
        tar: &mut TarReader,
        img: &ImageFile,
        progress: &dyn Progress,
    ) -> Result<(), BuildError> {
        let src = |m: String| BuildError::Source(m);
        let mut comps = components(&e.path).map_err(src)?;
        let shown = String::from_utf8_lossy(&e.path).into_owned();
        if super::exclude::excluded_or_under(&self.opts.exclude, &comps) {
            return Ok(());
        }
        let mut typeflag = e.typeflag;
        if typeflag == 0 && e.path.ends_with(b"/") {
            typeflag = b'5';
        }
        let mut devmajor_minor = (e.devmajor, e.devminor);
        if self.mode != Whiteouts::Keep
            && let Some(last) = comps.last().copied()
            && let Some(hidden) = last.strip_prefix(WHITEOUT)
        {
            if self.mode == Whiteouts::Apply {
                let parent = &comps[..comps.len() - 1];
                if last == OPAQUE {
                    let dir = self.dir(parent)?;
                    self.make_opaque(dir);
                } else if hidden.is_empty() || hidden.starts_with(WHITEOUT) {
                    return Err(src(format!("bad whiteout name {shown:?}")));
                } else if let Some(dir) = self.lookup(parent)
                    && !self.upper.contains(&(dir, hidden.to_vec()))
                    && let Some(entries) = self.tree.entries_mut(dir)
                {
                    entries.remove(hidden);
                }
                return Ok(());
            }
            let parent = self.dir(&comps[..comps.len() - 1])?;
            if last == OPAQUE {
                self.tree.nodes[parent]
                    .xattrs
                    .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
                return Ok(());
            }
            if hidden.is_empty() || hidden.starts_with(WHITEOUT) {
                return Err(src(format!("bad whiteout name {shown:?}")));
            }
            *comps.last_mut().expect("not empty") = hidden;
            typeflag = b'3';
            devmajor_minor = (0, 0);
        }
        super::xattrs::validate(&e.xattrs).map_err(|m| src(format!("{shown:?}: {m}")))?;
        let perm = (e.mode & 0o7777) as u16;
        let uid =
            u32::try_from(e.uid).map_err(|_| src(format!("{shown:?}: uid {} too large", e.uid)))?;
        let gid =
            u32::try_from(e.gid).map_err(|_| src(format!("{shown:?}: gid {} too large", e.gid)))?;
        let dev = || -> Result<u32, BuildError> {
            let (ma, mi) = devmajor_minor;
            if ma > 0xfff || mi > 0xfffff {
                return Err(src(format!("{shown:?}: device {ma}:{mi} out of range")));
            }
            Ok(encode_dev(ma as u32, mi as u32))
        };
        let mut hashed = false;
        let kind = match typeflag {
            b'0' | 0 | b'7' => {
                let bs = img.block_size();
                if e.size > (u32::MAX as u64) * bs {
                    return Err(src(format!(
                        "{shown:?}: size {} is too large for the image",
                        e.size
                    )));
                }
                let fp = self.opts.fingerprint.is_some() && e.size > 0;
                let max_ibody = max_ibody_size(&e.xattrs, fp);
                let at_header = tar.header_at;
                // A short read of a member's data is the archive ending early, whatever the
                // reader calls it (file_data's words are for files changing under us).
                let err = |io: std::io::Error| BuildError::Tar {
                    offset: at_header,
                    msg: if io.kind() == std::io::ErrorKind::UnexpectedEof {
                        format!("{shown:?}: archive is truncated (in this entry's data)")
                    } else {
                        format!("{shown:?}: {io}")
                    },
                };
                let skip = match &self.pass {
                    Pass::Store => false,
                    Pass::Plan => true,
                    Pass::Keep(k) => !k.contains(&self.at),
                };
                let stored = if skip {
                    // Left in the stream: the next header skips it.
                    Stored::default()
                } else if let Some(c) = &self.opts.compression {
                    let at =
                        super::compress::Placement::of(c, self.opts.inline, bs, e.size, max_ibody);
                    let short = || err(std::io::ErrorKind::UnexpectedEof.into());
                    let p = if e.size > super::compress::SEGMENT as u64 {
                        // Big: copied to a temporary file, then compressed a few segments
                        // at a time (the copy is read again if it is stored plain).
                        let mut spool = tempfile::tempfile_in(img.spool.dir())
                            .map_err(BuildError::io(img.spool.dir()))?;
                        let n = std::io::copy(&mut (&mut tar.r).take(e.size), &mut spool)
                            .map_err(err)?;
                        if n != e.size {
                            return Err(short());
                        }
                        progress.advance(e.size);
                        use std::io::Seek;
                        spool.rewind().map_err(BuildError::Write)?;
                        let mut again = spool.try_clone().map_err(BuildError::Write)?;
                        let origin = super::compress::Origin::File(spool);
                        super::compress::prepare_stream(
                            img, &mut again, e.size, origin, c, fp, at, &err,
                        )?
                    } else {
                        // Small: in memory, compressed in parallel segments.
                        let mut data = Vec::with_capacity(e.size as usize);
                        (&mut tar.r)
                            .take(e.size)
                            .read_to_end(&mut data)
                            .map_err(err)?;
                        if data.len() as u64 != e.size {
                            return Err(short());
                        }
                        progress.advance(e.size);
                        super::compress::prepare(data, c, bs, fp, at)?
                    };
                    super::compress::store(img, p, c)?
                } else {
                    let inline = file_data::can_inline(self.opts.inline, bs, e.size, max_ibody);
                    let at = file_data::place(img, e.size, inline);
                    let mut data = (&mut tar.r).take(e.size);
                    match self.hash.as_ref().filter(|_| fp) {
                        Some(pipe) => {
                            let mut tee = Tee {
                                inner: &mut data,
                                tx: &pipe.tx,
                            };
                            let s = file_data::store(
                                img, &at, e.size, &mut tee, false, progress, &err,
                            )?;
                            pipe.tx.send(Chunk::End).map_err(|_| {
                                BuildError::Source("the hashing thread ended".into())
                            })?;
                            hashed = true;
                            s
                        }
                        None => {
                            file_data::store(img, &at, e.size, &mut data, false, progress, &err)?
                        }
                    }
                };
                if !skip {
                    tar.pos += e.size;
                    tar.pending = pad(e.size);
                }
                Kind::File {
                    size: e.size,
                    content: Content::Stored(stored),
                }
            }
            b'1' => {
                let target = components(&e.link).map_err(src)?;
                if super::exclude::excluded_or_under(&self.opts.exclude, &target) {
                    // The file it names was left out: so is this name.
                    return Ok(());
                }
                let id = self.lookup(&target).ok_or_else(|| {
                    // One layer of a stack: the target may well be in a lower layer, but an
                    // image of this layer alone cannot link to it.
                    let hint = if self.mode == Whiteouts::Overlay {
                        " (a hardlink to a lower layer's file cannot be kept in an image of \
                         one layer; flatten the image instead)"
                    } else {
                        ""
                    };
                    src(format!(
                        "hardlink {shown:?} to {:?}, which is not in the archive before it{hint}",
                        String::from_utf8_lossy(&e.link)
                    ))
                })?;
                if self.tree.nodes[id].is_dir() {
                    return Err(src(format!("hardlink {shown:?} to a directory")));
                }
                let Some((name, parent)) = comps.split_last() else {
                    return Err(src("hardlink to the root".into()));
                };
                let dir = self.dir(parent)?;
                self.insert(dir, name, id);
                return Ok(());
            }
            b'2' => Kind::Symlink(e.link.clone()),
            b'3' => Kind::CharDev(dev()?),
            b'4' => Kind::BlockDev(dev()?),
            b'5' => Kind::Dir(BTreeMap::new()),
            b'6' => Kind::Fifo,
            b'S' => return Err(src(format!("{shown:?}: sparse files are not supported"))),
            b'V' => return Ok(()),
            t => {
                return Err(src(format!(
                    "{shown:?}: unsupported member type {:?}",
                    t as char
                )));
            }
        };
        if let Kind::Symlink(t) = &kind
            && (t.is_empty() || t.len() >= 4096)
        {
            return Err(src(format!(
                "symlink {shown:?} has a target of {} bytes (1 to 4095 allowed)",
                t.len()
            )));
        }
        let mut node = Node::new(kind, perm);
        node.uid = uid;
        node.gid = gid;
        node.mtime = e.mtime;
        node.mtime_nsec = e.mtime_nsec;
        node.xattrs = e.xattrs;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./").
            if !node.is_dir() {
                return Err(src(format!(
                    "{shown:?} names the root but is not a directory"
                )));
            }
            let root = &mut self.tree.nodes[0];
            node.kind = std::mem::replace(&mut root.kind, Kind::Fifo);
            *root = node;
            return Ok(());
        };
        let dir = self.dir(parent)?;
        let existing = self.tree.entries(dir).and_then(|e| e.get(*name).copied());
        match existing {
            // A directory again: new metadata, same children.
            Some(id) if self.tree.nodes[id].is_dir() && node.is_dir() => {
                node.kind = std::mem::replace(&mut self.tree.nodes[id].kind, Kind::Fifo);
                self.tree.nodes[id] = node;
                if self.mode == Whiteouts::Apply {
                    self.upper.insert((dir, name.to_vec()));
                }
            }
            _ => {
                let is_file = matches!(node.kind, Kind::File { .. });
                let id = self.tree.add(node);
                self.insert(dir, name, id);
                if is_file && matches!(self.pass, Pass::Plan) {
                    self.origins.insert(id, self.at);
                }
                if hashed {
                    self.hashed.push(id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(&[b'a'; 256]).is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
