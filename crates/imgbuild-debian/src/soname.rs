//! Which Debian package to add for a missing shared library: the suggestion the
//! linkage check ([`imgbuild_layer::linkage`]) puts beside a soname an image lacks.
//!
//! Debian policy (§8.1) names a run-time library package after the library's soname:
//! `libstdc++.so.6` is in `libstdc++6`, `libpq.so.5` in `libpq5`, and a name that ends
//! in a digit takes a hyphen before the version (`libfoo-1.2.so.0` -> `libfoo-1.2-0`).
//! Package names are lower case and have no `_` (`libgcc_s.so.1` -> `libgcc-s1`).
//! Trixie's 64-bit `time_t` transition renamed many of them with a `t64` suffix
//! (`libssl3t64`). glibc's libraries are all in `libc6`, and a short table holds the
//! common libraries named otherwise (`libz.so.1` in `zlib1g`, `libcrypto.so.3` in
//! `libssl3`, GLib's in `libglib2.0-0`, `libjpeg.so.62` in `libjpeg62-turbo`).
//!
//! Only names that exist in the index are returned (as a package, or as a virtual name
//! a package provides, then that package): the rule is a convention, and a guess the
//! suite does not have would send the user after a package that is not there. The
//! index has no file lists (`Contents-ARCH` is not read), so a library whose package
//! breaks the convention gets no suggestion rather than a wrong one.

use crate::Index;

/// glibc's libraries, all shipped by `libc6` (bookworm and trixie; `libcrypt.so.1` is
/// libxcrypt's `libcrypt1`, `libnsl.so.2` is `libnsl2`).
const GLIBC: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
    "libutil.so.1",
    "libanl.so.1",
    "libnsl.so.1",
    "libBrokenLocale.so.1",
    "libmvec.so.1",
    "libc_malloc_debug.so.0",
    "libthread_db.so.1",
    "libnss_files.so.2",
    "libnss_dns.so.2",
    "libnss_compat.so.2",
    "libnss_hesiod.so.2",
    "libmemusage.so",
    "libpcprofile.so",
];

/// Library packages Debian names otherwise than after the soname, for common
/// libraries (the names of bookworm and trixie, its `t64` renames included): `stem` is
/// the soname up to `.so`, `major` the first number after it.
fn named_otherwise(stem: &str, major: &str) -> Vec<String> {
    let v = major;
    match stem {
        "libz" => vec!["zlib1g".into()],
        "libcrypto" => vec![format!("libssl{v}"), format!("libssl{v}t64")],
        "libglib-2.0" | "libgobject-2.0" | "libgio-2.0" | "libgmodule-2.0" | "libgthread-2.0" => {
            vec![format!("libglib2.0-{v}"), format!("libglib2.0-{v}t64")]
        }
        "libjpeg" => vec![format!("libjpeg{v}-turbo")],
        "libcurl-gnutls" => vec!["libcurl3-gnutls".into(), "libcurl3t64-gnutls".into()],
        "libbrotlicommon" | "libbrotlidec" | "libbrotlienc" => vec![format!("libbrotli{v}")],
        "libxslt" | "libexslt" => vec!["libxslt1.1".into()],
        "libpam" | "libpam_misc" | "libpamc" => {
            vec![format!("libpam{v}g"), format!("libpam{v}t64")]
        }
        s if s.starts_with("libicu") => vec![format!("libicu{v}")],
        _ => vec![],
    }
}

/// The packages of `index` that, by Debian's naming of library packages, ship the
/// library `soname` (`libstdc++.so.6` -> `["libstdc++6"]`). Most likely first; empty
/// when no candidate name is in the index.
pub fn packages_for_soname(index: &Index, soname: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for name in candidate_names(soname) {
        if !index.versions(&name).is_empty() {
            push_unique(&mut out, name);
        } else {
            for (p, _) in index.providers(&name) {
                push_unique(&mut out, p.name.clone());
            }
        }
    }
    out
}

fn push_unique(out: &mut Vec<String>, name: String) {
    if !out.contains(&name) {
        out.push(name);
    }
}

/// The package names Debian's conventions give for `soname`, most likely first (not
/// checked against any index).
pub fn candidate_names(soname: &str) -> Vec<String> {
    let file = soname.rsplit('/').next().unwrap_or(soname);
    // the dynamic loader: ld-linux-x86-64.so.2, ld-linux-aarch64.so.1, ld-linux.so.2
    if file.starts_with("ld-linux") {
        return vec!["libc6".into()];
    }
    let (stem, version) = match file.find(".so") {
        Some(i) if file[i + 3..].is_empty() || file[i + 3..].starts_with('.') => {
            (&file[..i], file[i + 3..].trim_start_matches('.'))
        }
        _ => return vec![],
    };
    if GLIBC.contains(&file) {
        return vec!["libc6".into()];
    }
    let major = version.split('.').next().unwrap_or("");
    let mut names = named_otherwise(stem, major);
    let stem = stem.to_ascii_lowercase().replace('_', "-");
    // the soname's version as policy takes it (all of it), then its major alone
    // (sonames with a minor, `libpython3.11.so.1.0` is in `libpython3.11`), then none
    let mut versions = vec![version.to_owned()];
    if let Some((major, _)) = version.split_once('.') {
        versions.push(major.to_owned());
    }
    versions.push(String::new());
    let mut push = |n: String| {
        if !names.contains(&n) {
            names.push(n);
        }
    };
    for v in versions {
        let name = if v.is_empty() {
            stem.clone()
        } else if stem.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{stem}-{v}")
        } else {
            format!("{stem}{v}")
        };
        push(name.clone());
        push(format!("{name}t64"));
    }
    // a version in the name, without the hyphen (`libLLVM-14.so.1` in `libllvm14`,
    // `libdb-5.3.so` in `libdb5.3`)
    if stem.contains('-') {
        push(stem.replace('-', ""));
    }
    // a virtual package named after the soname (`libblas.so.3`, provided by each BLAS)
    names.push(file.to_owned());
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Base;

    /// A `Packages` file as the archive has it, reduced to what the index reads.
    fn index(entries: &[(&str, &str)]) -> Index {
        let mut text = String::new();
        for (i, (name, provides)) in entries.iter().enumerate() {
            text.push_str(&format!(
                "Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\n\
                 Filename: pool/main/x/{name}_1.0-1_amd64.deb\nSize: 1\n\
                 SHA256: {:064x}\n",
                i + 1
            ));
            if !provides.is_empty() {
                text.push_str(&format!("Provides: {provides}\n"));
            }
            text.push('\n');
        }
        let mut idx = Index::new();
        idx.add_packages(text.as_bytes(), Base::Debian, "trixie", "test Packages")
            .unwrap();
        idx
    }

    #[test]
    fn names_follow_debian_policy() {
        let first = |s: &str| candidate_names(s).into_iter().next();
        assert_eq!(first("libstdc++.so.6").as_deref(), Some("libstdc++6"));
        assert_eq!(first("libpq.so.5").as_deref(), Some("libpq5"));
        assert_eq!(first("libgfortran.so.5").as_deref(), Some("libgfortran5"));
        assert_eq!(first("libfoo-1.2.so.0").as_deref(), Some("libfoo-1.2-0"));
        assert_eq!(first("libgcc_s.so.1").as_deref(), Some("libgcc-s1"));
        assert_eq!(first("libSDL2-2.0.so.0").as_deref(), Some("libsdl2-2.0-0"));
        assert_eq!(first("libc.so.6").as_deref(), Some("libc6"));
        assert_eq!(first("ld-linux-x86-64.so.2").as_deref(), Some("libc6"));
        assert_eq!(first("libnss3.so").as_deref(), Some("libnss3"));
        assert!(candidate_names("libpython3.11.so.1.0").contains(&"libpython3.11".to_owned()));
        assert!(candidate_names("libssl.so.3").contains(&"libssl3t64".to_owned()));
        assert_eq!(first("libz.so.1").as_deref(), Some("zlib1g"));
        assert_eq!(first("libcrypto.so.3").as_deref(), Some("libssl3"));
        assert_eq!(first("libcrypt.so.1").as_deref(), Some("libcrypt1"));
        assert_eq!(first("libnsl.so.2").as_deref(), Some("libnsl2"));
        assert!(candidate_names("libLLVM-14.so.1").contains(&"libllvm14".to_owned()));
        assert!(candidate_names("libdb-5.3.so").contains(&"libdb5.3".to_owned()));
        assert!(candidate_names("not-a-library").is_empty());
        assert!(candidate_names("libfoo.sox").is_empty());
    }

    #[test]
    fn only_packages_the_index_has_are_suggested() {
        let idx = index(&[
            ("libstdc++6", ""),
            ("libpq5", ""),
            ("libgfortran5", ""),
            ("libfoo-1.2-0", ""),
            ("libc6", ""),
            ("libgcc-s1", ""),
            ("libssl3t64", ""),
            ("libpython3.11", ""),
            // a library package known by a virtual name only
            ("libblas3-openblas", "libblas3"),
            ("libopenblas0-pthread", "libblas.so.3"),
            // a package whose name looks close but is not the policy name
            ("libpq-dev", ""),
        ]);
        let s = |soname: &str| packages_for_soname(&idx, soname);
        assert_eq!(s("libstdc++.so.6"), ["libstdc++6"]);
        assert_eq!(s("libpq.so.5"), ["libpq5"]);
        assert_eq!(s("libgfortran.so.5"), ["libgfortran5"]);
        assert_eq!(s("libfoo-1.2.so.0"), ["libfoo-1.2-0"]);
        assert_eq!(s("libm.so.6"), ["libc6"]);
        assert_eq!(s("libgcc_s.so.1"), ["libgcc-s1"]);
        assert_eq!(s("libssl.so.3"), ["libssl3t64"]);
        assert_eq!(s("libpython3.11.so.1.0"), ["libpython3.11"]);
        assert_eq!(
            s("libblas.so.3"),
            ["libblas3-openblas", "libopenblas0-pthread"]
        );
        // a soname whose package the index lacks: no guess
        assert!(s("libcuda.so.1").is_empty());
        assert!(s("libpq.so.6").is_empty());
    }
}
