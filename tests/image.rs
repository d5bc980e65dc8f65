//! The container image: `image/build` assembles it without a daemon and writes an OCI archive.
//! The archive is read back as a registry or containerd would: its index names the chart's
//! default image, its config has the entrypoint, user and labels, and its one layer, unpacked,
//! runs `aad-pod-identity --version`, `iptables` and `conntrack`. The Dockerfile must describe the
//! same image.
//!
//! The image here carries the test build of the binary (the release one is `image/build`'s
//! default, measured in the notes); what is checked is the image, not the binary's speed.
//! Needs root, buildah and apt: skipped on a developer machine without them, never in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn skip_reason() -> Option<String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return Some("image/build needs root".into());
    }
    for tool in ["buildah", "apt-get", "dpkg-deb", "chroot"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is not installed (apt-get install buildah)"));
        }
    }
    None
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest is alg:hex");
    layout.join("blobs").join(alg).join(hex)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn chart_app_version() -> String {
    let chart = std::fs::read_to_string(root().join("chart/Chart.yaml")).unwrap();
    let chart: serde_yaml::Value = serde_yaml::from_str(&chart).unwrap();
    chart["appVersion"].as_str().unwrap().to_string()
}

/// `KEY value` lines of the Dockerfile's final stage, for the instructions the image config holds.
fn dockerfile_final_stage(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let final_stage = text.rsplit("\nFROM ").next().unwrap();
    final_stage
        .lines()
        .filter_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .next_back()
}

#[test]
fn image_build_writes_an_oci_archive_of_the_charts_default_image_that_runs() {
    if let Some(reason) = skip_reason() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the image test must run in CI, but: {reason}"
        );
        println!("SKIPPED: {reason}");
        return;
    }
    let work = std::env::temp_dir().join(format!("aadpi-image-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let out = Command::new(root().join("image/build"))
        .args(["--binary", env!("CARGO_BIN_EXE_aad-pod-identity"), "--out"])
        .arg(work.join("out"))
        .env("IMAGE_SOURCE", "https://example.invalid/aad-pod-identity")
        .output()
        .expect("image/build starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "image/build failed:\n{stdout}\n{stderr}"
    );
    let archive = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the archive path is printed last"),
    );
    assert!(archive.is_file(), "{archive:?}");
    let size = std::fs::metadata(&archive).unwrap().len();
    println!("image archive {} bytes (test binary inside)", size);

    // Read the archive as an OCI image layout.
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    // The chart's default image: repository `aad-pod-identity`, tag = appVersion.
    let app_version = chart_app_version();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "appVersion follows the crate"
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        format!("aad-pod-identity:{app_version}")
    );
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("chart/values.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        values["image"]["repository"].as_str(),
        Some("aad-pod-identity")
    );
    assert_eq!(
        values["image"]["tag"].as_str(),
        Some(""),
        "empty tag = appVersion"
    );

    let manifest = json(&blob(&layout, entry["digest"].as_str().unwrap()));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/aad-pod-identity"])
    );
    assert_eq!(c["User"], "65532:65532", "MIC runs as non-root");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], app_version);
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.invalid/aad-pod-identity"
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(config["architecture"], "amd64");

    // The Dockerfile describes the same image.
    assert_eq!(
        dockerfile_final_stage("ENTRYPOINT "),
        Some(r#"["/usr/local/bin/aad-pod-identity"]"#.to_string())
    );
    assert_eq!(dockerfile_final_stage("USER "), Some("65532:65532".into()));

    // Unpack the layer as a runtime would and run what NMI and MIC need from inside it.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer, from scratch");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(blob(&layout, layers[0]["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&rootfs)
            .status()
            .unwrap()
            .success()
    );
    let run = |args: &[&str]| {
        let o = Command::new("chroot")
            .arg(&rootfs)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let version = run(&["/usr/local/bin/aad-pod-identity", "--version"]);
    assert!(
        version.starts_with(&format!("aad-pod-identity {app_version} (commit ")),
        "{version}"
    );
    assert!(run(&["/usr/sbin/iptables", "--version"]).contains("iptables v"));
    assert!(run(&["/usr/sbin/iptables-legacy", "--version"]).contains("legacy"));
    assert!(run(&["/usr/sbin/conntrack", "--version"]).contains("conntrack"));
    let bundle = std::fs::metadata(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.len() > 100_000, "CA bundle for ARM and Azure AD");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");

    let _ = std::fs::remove_dir_all(&work);
}
