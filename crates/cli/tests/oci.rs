//! `erofs-share mkfs` of OCI images the tests write themselves (three layers: gzip, zstd,
//! plain; files replaced, whiteouts, an opaque directory, hardlinks within and across layers,
//! xattrs): the flattened image against Debian's `umoci unpack`, the `--layers` images
//! stacked with overlayfs, docker save vs oci-archive reproducibility, and hostile inputs.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::{LoopMount, Need, manifest, require};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_erofs-share"));
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A minimal ustar writer: full control over names (the hostile tests need `..`), PAX
/// xattrs, hardlinks, fifos.
#[derive(Default)]
struct Tar(Vec<u8>);

const T: u64 = 1_600_000_000;

impl Tar {
    fn header(&mut self, name: &str, kind: u8, mode: u32, size: u64, link: &str, mtime: u64) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let oct = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        oct(&mut h, 100, 8, mode as u64);
        oct(&mut h, 108, 8, 0);
        oct(&mut h, 116, 8, 0);
        oct(&mut h, 124, 12, size);
        oct(&mut h, 136, 12, mtime);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        oct(&mut h, 148, 7, sum);
        self.0.extend_from_slice(&h);
    }
    fn data(&mut self, d: &[u8]) {
        self.0.extend_from_slice(d);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }
    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while format!("{len}").len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.header("PaxHeader", b'x', 0o644, body.len() as u64, "", T);
        self.data(&body);
    }
    fn dir(mut self, name: &str, mtime: u64) -> Self {
        self.header(name, b'5', 0o755, 0, "", mtime);
        self
    }
    fn file(mut self, name: &str, content: &[u8]) -> Self {
        self.header(name, b'0', 0o644, content.len() as u64, "", T);
        self.data(content);
        self
    }
    fn file_x(mut self, name: &str, content: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let recs: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        let recs: Vec<(&str, &[u8])> = recs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.pax(&recs);
        self.file(name, content)
    }
    fn exe(mut self, name: &str, content: &[u8]) -> Self {
        self.header(name, b'0', 0o755, content.len() as u64, "", T);
        self.data(content);
        self
    }
    fn hardlink(mut self, name: &str, target: &str) -> Self {
        self.header(name, b'1', 0o644, 0, target, T);
        self
    }
    fn symlink(mut self, name: &str, target: &str) -> Self {
        self.header(name, b'2', 0o777, 0, target, T);
        self
    }
    fn fifo(mut self, name: &str) -> Self {
        self.header(name, b'6', 0o600, 0, "", T);
        self
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

#[derive(Clone, Copy)]
enum Comp {
    Gzip,
    Zstd,
    Plain,
}

/// The three layers. `cross_links`: a hardlink in layer 2 to a file of layer 1.
fn layers(cross_links: bool) -> Vec<(Vec<u8>, Comp)> {
    let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let l1 = Tar::default()
        .dir("./", T)
        .dir("etc/", T)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .dir("bin/", T)
        .exe("bin/tool", &big)
        .hardlink("bin/tool-link", "bin/tool")
        .dir("data/", T)
        .file("data/old1", b"old one")
        .file("data/old2", b"old two")
        .dir("data/sub/", T)
        .file("data/sub/deep", b"deep")
        .dir("gone/", T)
        .file("gone/file", b"bye")
        .file_x("keep.txt", b"keep v1", &[("user.test", b"hello")])
        .symlink("lnk", "etc/passwd")
        .end();
    let mut l2 = Tar::default()
        .dir("etc/", T + 10)
        .file(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home:/bin/sh\n",
        )
        .file("etc/.wh.hosts", b"")
        .file(".wh.gone", b"")
        .dir("data/", T + 10)
        .file("data/.wh..wh..opq", b"")
        .file("data/new", b"new in layer 2")
        .fifo("fifo");
    if cross_links {
        l2 = l2.dir("bin/", T).hardlink("bin/tool-link2", "bin/tool");
    }
    let l2 = l2.end();
    let l3 = Tar::default()
        .dir("etc/", T + 20)
        .file("etc/hosts", b"10.0.0.1 back\n")
        .file_x(
            "keep.txt",
            b"keep v3",
            &[("user.test", b"world"), ("user.other", b"x")],
        )
        .dir("data/", T + 10)
        .dir("data/sub/", T + 20)
        .file("data/sub/again", b"again")
        .dir("newdir/", T + 20)
        .file("newdir/f", &big[..5000])
        .end();
    vec![(l1, Comp::Gzip), (l2, Comp::Zstd), (l3, Comp::Plain)]
}

/// An OCI image: its blobs by hex digest, the manifest's digest, config digest, layer blob
/// digests.
struct Oci {
    blobs: Vec<(String, Vec<u8>)>,
    manifest: (String, usize),
    config: String,
    layer_digests: Vec<String>,
}

fn oci_image(layers: Vec<(Vec<u8>, Comp)>) -> Oci {
    let mut blobs = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for (tar, comp) in layers {
        diff_ids.push(format!("sha256:{}", sha(&tar)));
        let (blob, mt) = match comp {
            Comp::Gzip => {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Comp::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            Comp::Plain => (tar, "application/vnd.oci.image.layer.v1.tar"),
        };
        let d = sha(&blob);
        descs.push(json!({"mediaType": mt, "digest": format!("sha256:{d}"), "size": blob.len()}));
        layer_digests.push(d.clone());
        blobs.push((d, blob));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(), "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = sha(&config);
    blobs.push((cd.clone(), config.clone()));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{cd}"), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = sha(&manifest);
    let ml = manifest.len();
    blobs.push((md.clone(), manifest));
    Oci {
        blobs,
        manifest: (md, ml),
        config: cd,
        layer_digests,
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

const REF: &str = "test:latest";

/// Write the image as an OCI layout directory, its index naming it `refs`.
fn write_layout(dir: &Path, img: &Oci, index: serde_json::Value) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for (d, b) in &img.blobs {
        std::fs::write(dir.join("blobs/sha256").join(d), b).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn index_of(img: &Oci, reference: &str) -> serde_json::Value {
    json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", img.manifest.0), "size": img.manifest.1,
        "annotations": {"org.opencontainers.image.ref.name": reference},
        "platform": {"os": "linux", "architecture": host_arch()},
    }]})
}

/// A tar of a directory (GNU tar, sorted, so member order is fixed).
fn tar_dir(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .args(["--sort=name", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// A `docker save` tar of the Docker 25+ form: an OCI layout plus `manifest.json`.
fn write_docker_save(dir: &Path, img: &Oci) {
    write_layout(dir, img, index_of(img, REF));
    let m = json!([{
        "Config": format!("blobs/sha256/{}", img.config),
        "RepoTags": [REF],
        "Layers": img.layer_digests.iter().map(|d| format!("blobs/sha256/{d}")).collect::<Vec<_>>(),
    }]);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

/// What the kernel shows, without our provenance xattr on the root.
fn tree_of(root: &Path) -> manifest::Manifest {
    let mut m = manifest::of_tree(root).unwrap();
    if let Some(x) = m.get_mut(".").and_then(|r| r["xattrs"].as_object_mut()) {
        x.remove("trusted.erofs-share.oci");
    }
    m
}

fn mkfs(args: &[&std::ffi::OsStr]) -> Output {
    bin().arg("mkfs").args(args).output().unwrap()
}

#[test]
fn flatten_matches_umoci_and_layers_stack_to_the_same_tree() {
    const UMOCI: Need = Need::Program {
        name: "umoci",
        package: "umoci",
    };
    if !require(
        "flatten_matches_umoci_and_layers_stack_to_the_same_tree",
        &[Need::KernelErofs, UMOCI],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let img = oci_image(layers(true));
    write_layout(&layout, &img, index_of(&img, REF));

    // Debian's umoci (0.4.7) reads no zstd layers: it gets the same layer tars (same
    // diff_ids) with gzip in place of zstd.
    let for_umoci = tmp.path().join("layout-gzip");
    let gz: Vec<_> = layers(true)
        .into_iter()
        .map(|(t, c)| {
            (
                t,
                if matches!(c, Comp::Zstd) {
                    Comp::Gzip
                } else {
                    c
                },
            )
        })
        .collect();
    let gz_img = oci_image(gz);
    write_layout(&for_umoci, &gz_img, index_of(&gz_img, REF));
    let bundle = tmp.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{REF}", for_umoci.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    ok(&out, "umoci unpack");
    let mut expected = tree_of(&bundle.join("rootfs"));

    let flat = tmp.path().join("flat.erofs");
    let out = mkfs(&[flat.as_ref(), layout.as_ref()]);
    ok(&out, "mkfs flatten");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("OCI image layout directory"), "{said}");
    let m = LoopMount::new(&flat).unwrap();
    let got = tree_of(m.path());
    // The rootfs directory itself is umoci's (mode 0755, its own mtime): compare the root
    // by what the layers say.
    let root_mtime = got["."]["mtime_ns"].clone();
    expected.get_mut(".").unwrap()["mtime_ns"] = root_mtime;
    manifest::assert_same(&expected, &got, "flattened image vs umoci unpack");
    // The cases the layers exercise are really there.
    assert!(!got.contains_key("gone") && !got.contains_key("data/old1"));
    assert_eq!(got["bin/tool-link2"]["nlink"], 3);
    assert_eq!(got["keep.txt"]["xattrs"]["user.test"], hex::encode("world"));
    drop(m);

    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("inspect")
        .arg(&flat)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out, "inspect")).unwrap();
    assert_eq!(v["oci_source"]["ref"], REF);
    assert_eq!(
        v["oci_source"]["manifest"],
        format!("sha256:{}", img.manifest.0)
    );

    // One image per layer, stacked: the same tree. A hardlink across layers cannot span
    // overlay layers, so this image has none.
    let layout2 = tmp.path().join("layout2");
    let img2 = oci_image(layers(false));
    write_layout(&layout2, &img2, index_of(&img2, REF));
    let flat2 = tmp.path().join("flat2.erofs");
    ok(&mkfs(&[flat2.as_ref(), layout2.as_ref()]), "mkfs flatten 2");
    let dir = tmp.path().join("layers");
    let out = bin()
        .args(["mkfs", "--json", "--layers"])
        .arg(&dir)
        .arg(&layout2)
        .output()
        .unwrap();
    let stack: serde_json::Value = serde_json::from_str(&ok(&out, "mkfs --layers")).unwrap();
    let images: Vec<PathBuf> = stack["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["image"].as_str().unwrap()))
        .collect();
    assert_eq!(images.len(), 3);
    let mounts: Vec<LoopMount> = images.iter().map(|p| LoopMount::new(p).unwrap()).collect();
    let lower: Vec<String> = mounts
        .iter()
        .rev()
        .map(|m| m.path().display().to_string())
        .collect();
    let ovl = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(ovl.path())
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount");
    let stacked = tree_of(ovl.path());
    let _ = Command::new("umount").arg(ovl.path()).status();
    let m2 = LoopMount::new(&flat2).unwrap();
    let mut flat_tree = tree_of(m2.path());
    // The overlay root is the top layer's root directory, and overlayfs counts no links
    // of merged directories (nlink 1).
    flat_tree.get_mut(".").unwrap()["mtime_ns"] = stacked["."]["mtime_ns"].clone();
    for (path, e) in flat_tree.iter_mut() {
        if e["type"] == "dir" && stacked.get(path).is_some_and(|s| s["nlink"] == 1) {
            e["nlink"] = json!(1);
        }
    }
    manifest::assert_same(
        &flat_tree,
        &stacked,
        "--layers under overlayfs vs flattened",
    );
}

#[test]
fn docker_save_and_oci_archive_give_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let img = oci_image(layers(true));
    let (oci_dir, docker_dir) = (tmp.path().join("oci"), tmp.path().join("docker"));
    write_layout(&oci_dir, &img, index_of(&img, REF));
    write_docker_save(&docker_dir, &img);
    let (oci_tar, docker_tar) = (tmp.path().join("oci.tar"), tmp.path().join("docker.tar"));
    tar_dir(&oci_dir, &oci_tar);
    tar_dir(&docker_dir, &docker_tar);
    let build = |src: &Path, name: &str, kind: &str| {
        let out_img = tmp.path().join(name);
        let out = mkfs(&[out_img.as_ref(), src.as_ref()]);
        ok(&out, name);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(kind), "{name}: {said}");
        std::fs::read(out_img).unwrap()
    };
    let a = build(&oci_tar, "a.erofs", "oci-archive");
    let b = build(&docker_tar, "b.erofs", "docker save tar");
    // --json names the kind too.
    let out = mkfs(&[
        "--json".as_ref(),
        tmp.path().join("j.erofs").as_os_str(),
        oci_tar.as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out, "mkfs --json")).unwrap();
    assert_eq!(v["source_kind"], "OCI image layout tar (oci-archive)");
    let c = build(&oci_dir, "c.erofs", "OCI image layout directory");
    assert!(a == b, "oci-archive and docker save images differ");
    // The whiteout rules, without a mount: what the layers leave.
    let x = tmp.path().join("x");
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("extract")
        .arg(tmp.path().join("a.erofs"))
        .arg(&x)
        .output()
        .unwrap();
    ok(&out, "extract");
    let mut names: Vec<String> = walk(&x);
    names.sort();
    assert_eq!(
        names,
        [
            "bin",
            "bin/tool",
            "bin/tool-link",
            "bin/tool-link2",
            "data",
            "data/new",
            "data/sub",
            "data/sub/again",
            "etc",
            "etc/hosts",
            "etc/passwd",
            "fifo",
            "keep.txt",
            "lnk",
            "newdir",
            "newdir/f"
        ]
    );
    assert_eq!(
        std::fs::read(x.join("etc/hosts")).unwrap(),
        b"10.0.0.1 back\n"
    );
    assert!(a == c, "oci-archive and layout images differ");

    // A docker save tar of the old form: `ID/layer.tar` (uncompressed, checked against the
    // diff_ids only), `HEX.json` config, no OCI index, so no manifest digest to record.
    let old = tmp.path().join("docker-old");
    std::fs::create_dir_all(&old).unwrap();
    let cfg = &img.blobs.iter().find(|(d, _)| *d == img.config).unwrap().1;
    std::fs::write(old.join(format!("{}.json", img.config)), cfg).unwrap();
    let mut paths = Vec::new();
    for (i, (tar, _)) in layers(true).into_iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        std::fs::create_dir_all(old.join(&id)).unwrap();
        std::fs::write(old.join(&id).join("layer.tar"), tar).unwrap();
        paths.push(format!("{id}/layer.tar"));
    }
    let m = json!([{"Config": format!("{}.json", img.config), "RepoTags": [REF], "Layers": paths}]);
    std::fs::write(old.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let old_tar = tmp.path().join("docker-old.tar");
    tar_dir(&old, &old_tar);
    build(&old_tar, "d.erofs", "docker save tar");
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .args(["inspect", "--json"])
        .arg(tmp.path().join("d.erofs"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out, "inspect")).unwrap();
    assert_eq!(
        v["oci_source"],
        json!({"ref": REF, "config": format!("sha256:{}", img.config)})
    );
    let xd = tmp.path().join("xd");
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("extract")
        .arg(tmp.path().join("d.erofs"))
        .arg(&xd)
        .output()
        .unwrap();
    ok(&out, "extract d");
    let mut names_d = walk(&xd);
    names_d.sort();
    assert_eq!(names, names_d);
}

/// Run mkfs on a hostile source; it must fail with `expect` in its message and leave
/// nothing in the output directory.
fn fails_cleanly(src: &Path, extra: &[&str], expect: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let img = out_dir.path().join("out.erofs");
    let out = bin()
        .arg("mkfs")
        .args(extra)
        .arg(&img)
        .arg(src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{expect}: mkfs succeeded");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{expect}: left {left:?}");
    // The same with --layers: the directory is not left behind.
    let layers = out_dir.path().join("layers");
    let out = bin()
        .arg("mkfs")
        .args(extra)
        .arg("--layers")
        .arg(&layers)
        .arg(src)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{expect}: mkfs --layers succeeded");
    assert!(!layers.exists(), "{expect}: --layers left its directory");
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut layout = |img: &Oci, index: serde_json::Value| {
        n += 1;
        let d = tmp.path().join(format!("l{n}"));
        write_layout(&d, img, index);
        d
    };
    let img = oci_image(layers(true));

    // A layer blob missing.
    let d = layout(&img, index_of(&img, REF));
    std::fs::remove_file(d.join("blobs/sha256").join(&img.layer_digests[1])).unwrap();
    fails_cleanly(&d, &[], "missing");

    // A layer blob changed (same size): its digest no longer matches.
    let d = layout(&img, index_of(&img, REF));
    let p = d.join("blobs/sha256").join(&img.layer_digests[2]);
    let mut b = std::fs::read(&p).unwrap();
    b[600] ^= 1;
    std::fs::write(&p, b).unwrap();
    fails_cleanly(&d, &[], "does not match its digest");

    // Each layer (gzip, zstd, plain) in turn stored under a digest that is not its own,
    // content intact: only the blob digest check can catch it.
    for i in 0..3 {
        let mut bad = oci_image(layers(true));
        let mfile = bad
            .blobs
            .iter()
            .find(|(d, _)| *d == bad.manifest.0)
            .unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&mfile.1).unwrap();
        let wrong = format!("{:02x}", i + 1).repeat(32);
        let content = bad
            .blobs
            .iter()
            .find(|(d, _)| *d == bad.layer_digests[i])
            .unwrap()
            .1
            .clone();
        m["layers"][i]["digest"] = json!(format!("sha256:{wrong}"));
        let mb = serde_json::to_vec(&m).unwrap();
        bad.manifest = (sha(&mb), mb.len());
        bad.blobs.push((wrong.clone(), content));
        bad.blobs.push((bad.manifest.0.clone(), mb));
        let d = layout(&bad, index_of(&bad, REF));
        fails_cleanly(
            &d,
            &[],
            &format!("layer blob sha256:{wrong} does not match its digest"),
        );
    }

    // A config whose diff_id does not match the uncompressed layer.
    let mut bad = oci_image(layers(true));
    let cfg = serde_json::to_vec(&json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [
            format!("sha256:{}", "11".repeat(32)),
            format!("sha256:{}", "22".repeat(32)),
            format!("sha256:{}", "33".repeat(32))]},
    }))
    .unwrap();
    let cd = sha(&cfg);
    let mut m: serde_json::Value = serde_json::from_slice(
        &bad.blobs
            .iter()
            .find(|(d, _)| *d == bad.manifest.0)
            .unwrap()
            .1,
    )
    .unwrap();
    m["config"]["digest"] = json!(format!("sha256:{cd}"));
    m["config"]["size"] = json!(cfg.len());
    let mb = serde_json::to_vec(&m).unwrap();
    bad.manifest = (sha(&mb), mb.len());
    bad.blobs.push((cd, cfg));
    bad.blobs.push((bad.manifest.0.clone(), mb));
    let d = layout(&bad, index_of(&bad, REF));
    fails_cleanly(&d, &[], "diff_id");

    // Absurd sizes: a manifest said to be 2^60 bytes.
    let mut idx = index_of(&img, REF);
    idx["manifests"][0]["size"] = json!(1u64 << 60);
    let d = layout(&img, idx);
    fails_cleanly(&d, &[], "bytes");

    // An index that names itself.
    let nested_digest = format!("sha256:{}", "ab".repeat(32));
    let nested = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest, "size": 10}]}))
    .unwrap();
    let idx = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest, "size": nested.len()}]});
    let d = layout(&img, idx);
    std::fs::write(d.join("blobs/sha256").join("ab".repeat(32)), &nested).unwrap();
    fails_cleanly(&d, &[], "does not match its digest");

    // A layer tar that climbs out of the root.
    let evil = Tar::default().file("../../etc/evil", b"x").end();
    let evil_img = oci_image(vec![(evil, Comp::Gzip)]);
    let d = layout(&evil_img, index_of(&evil_img, REF));
    fails_cleanly(&d, &[], "leaves the archive root");

    // --layers of an image with a hardlink across layers: refused, with the way out.
    let d = layout(&img, index_of(&img, REF));
    let dir = tmp.path().join("layers-out");
    let out = bin()
        .arg("mkfs")
        .arg("--layers")
        .arg(&dir)
        .arg(&d)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("flatten the image instead"),
        "{said}"
    );
    assert!(!dir.exists(), "--layers left {}", dir.display());

    // A compressed oci-archive cannot be read in place: a clear error, not an image of blobs.
    let d = layout(&img, index_of(&img, REF));
    let tgz = tmp.path().join("oci.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&d)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out_dir = tempfile::tempdir().unwrap();
    let out = mkfs(&[out_dir.path().join("x.erofs").as_ref(), tgz.as_ref()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("OCI image layout"),
        "{said}"
    );
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);

    // Two refs and no --ref; a ref that is not there; a platform that is not there.
    let other = oci_image(layers(false));
    let mut two = index_of(&img, REF);
    two["manifests"]
        .as_array_mut()
        .unwrap()
        .push(index_of(&other, "other")["manifests"][0].clone());
    let two_index = two.clone();
    let d = layout(&img, two);
    write_layout(&d, &other, index_of(&other, "unused"));
    std::fs::write(
        d.join("index.json"),
        serde_json::to_vec(&two_index).unwrap(),
    )
    .unwrap();
    fails_cleanly(&d, &[], "more than one image matches");
    fails_cleanly(&d, &["--ref", "nope"], "the input has: ref \"test:latest\"");
    fails_cleanly(&d, &["--platform", "linux/s390x"], "no image matches");
    // ... and with the right choice it builds.
    let out_img = tmp.path().join("chosen.erofs");
    ok(
        &mkfs(&[
            "--ref".as_ref(),
            "other".as_ref(),
            out_img.as_ref(),
            d.as_ref(),
        ]),
        "mkfs --ref other",
    );
}

#[test]
fn deleted_and_replaced_files_leave_no_blocks_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let l1 = Tar::default()
        .file("big", &big)
        .file("replaced", &big)
        .end();
    let l2 = Tar::default()
        .file(".wh.big", b"")
        .file("replaced", b"small now")
        .end();
    let img = oci_image(vec![(l1, Comp::Gzip), (l2, Comp::Plain)]);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &img, index_of(&img, REF));
    let out_img = tmp.path().join("flat.erofs");
    ok(&mkfs(&[out_img.as_ref(), layout.as_ref()]), "mkfs");
    let size = std::fs::metadata(&out_img).unwrap().len();
    assert!(size < 64 * 1024, "image of {size} bytes keeps dead content");
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .args(["extract"])
        .arg(&out_img)
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    ok(&out, "extract");
    assert_eq!(
        std::fs::read(tmp.path().join("x/replaced")).unwrap(),
        b"small now"
    );
    assert!(!tmp.path().join("x/big").exists());
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.symlink_metadata().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}
