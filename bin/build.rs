//! Build metadata for `--version` and `posrelay_build_info`: the git commit (with
//! `-dirty` when the work tree has changes) and the build date. Outside a git checkout
//! (a source tarball) the commit is `unknown`; `SOURCE_DATE_EPOCH` fixes the date for
//! reproducible builds.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) if !hash.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash}-dirty")
            } else {
                hash
            }
        }
        _ => "unknown".to_owned(),
    };
    let date = {
        let mut cmd = Command::new("date");
        cmd.arg("-u").arg("+%Y-%m-%d");
        if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
            cmd.arg("-d").arg(format!("@{epoch}"));
        }
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    println!("cargo:rustc-env=POSRELAY_COMMIT={commit}");
    println!("cargo:rustc-env=POSRELAY_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit, a checkout or a staged change: HEAD, the branch it names, the index.
    for path in ["HEAD", "index"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
