//! Python virtual environment layers, built natively and deterministically from a pinned,
//! hashed requirements file, for a *target* interpreter (the image's), without running
//! Python inside the image.
//!
//! The flow, all blocking:
//! 0. [`read_target`]: the target (interpreter, version, ABI, glibc, architecture) read
//!    from the image's files ([`image_target`]), never constants; [`VenvSpec::for_image`].
//! 1. [`parse_requirements`]: every line pinned (`==`) and hashed (`--hash=sha256:`).
//! 2. [`fingerprint`]: a stable key of everything that determines the layer, computed
//!    without network or wheel reads, so a caller can skip the whole layer.
//! 3. [`fetch_wheels`]: per requirement whose marker holds for the target, the best
//!    compatible wheel whose sha256 is pinned, from the store or the index pip is
//!    configured with; verified, stored by digest, unpacked once into a cache.
//! 4. [`install`]: closure check ([`check_closure`]), then the venv into an
//!    [`imgbuild_layer::Tree`], with optional `.pyc` files written by the image's own
//!    interpreter ([`interpreter::ImageInterpreter`], copied out of the lower layers by
//!    [`imgbuild_layer::image::ImageFiles`] and run through the image's loader), never the host's.
//!
//! ```toml
//! [[layers]]
//! python = { requirements = "layers/venv/requirements.txt", venv = "/opt/venv" }  # interpreter: the image's
//! ```
//!
//! Modules: [`version`] (PEP 440), [`marker`] (PEP 508), [`target`] (target, tags, wheel
//! names), [`image_target`] (the target read from an image), [`requirements`], [`index`] (pip config, simple API), [`fetch`], [`unpack`]
//! (unpacked-wheel cache), [`sdist`] (requirements built from their sdist), [`install`],
//! [`interpreter`] (the image's interpreter, run on the host), [`bytecode`], [`error`].

pub mod bytecode;
pub mod error;
pub mod fetch;
pub mod image_target;
pub mod index;
pub mod install;
pub mod interpreter;
pub mod marker;
pub mod requirements;
pub mod sdist;
pub mod target;
pub mod unpack;
pub mod version;

use std::path::PathBuf;

use sha2::Digest as _;

pub use error::{Error, Result};
pub use fetch::{SelectedWheel, fetch_wheels, fetch_wheels_building};
pub use image_target::{ImageTarget, read_target};
pub use imgbuild_layer::image::ImageFiles;
pub use index::IndexConfig;
pub use install::{InstallReport, check_closure, install};
pub use interpreter::ImageInterpreter;
pub use requirements::{GitPin, Requirement, Requirements, parse_requirements};
pub use sdist::{Sdist, WheelBuilder};
pub use target::{Libc, Target};

/// Bumped whenever the layer this crate produces for the same inputs changes.
/// (v2: `.pyc` files written by the image's interpreter, not a host one.)
pub const FORMAT_VERSION: &str = "imgbuild-python-v2";

/// What to build: one venv for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VenvSpec {
    /// The requirements file (read by [`parse_requirements`]; used in messages).
    pub requirements: PathBuf,
    /// Absolute in-image path of the venv, e.g. `/opt/venv`.
    pub venv: String,
    /// Absolute in-image path of the interpreter, e.g. `/usr/bin/python3.11`.
    pub interpreter: String,
    /// Write `.pyc` files, with the image's own interpreter (see [`install`]).
    pub bytecode: bool,
    pub target: Target,
}

impl VenvSpec {
    /// A spec for Debian bookworm's python3.11, for tests and examples; builds use
    /// [`VenvSpec::for_image`] with the target read from the image.
    pub fn bookworm(requirements: impl Into<PathBuf>, venv: &str) -> VenvSpec {
        VenvSpec {
            requirements: requirements.into(),
            venv: venv.to_owned(),
            interpreter: "/usr/bin/python3.11".to_owned(),
            bytecode: true,
            target: Target::bookworm_cpython311(),
        }
    }

    /// The spec of a venv over an image whose target was read by
    /// [`image_target::read_target`].
    pub fn for_image(
        requirements: impl Into<PathBuf>,
        venv: &str,
        bytecode: bool,
        image: &ImageTarget,
    ) -> VenvSpec {
        VenvSpec {
            requirements: requirements.into(),
            venv: venv.to_owned(),
            interpreter: image.interpreter.clone(),
            bytecode,
            target: image.target.clone(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.target.validate().map_err(Error::Spec)?;
        validate_paths(&self.venv, Some(&self.interpreter))?;
        // the venv is laid out for the target (lib/python3.Y, cp3Y wheels): an
        // interpreter named for another version would not find any of it
        let (major, minor) = self.target.python_major_minor();
        let name = self.interpreter.rsplit('/').next().unwrap_or("");
        let named = name.strip_prefix("python").and_then(|v| {
            let mut it = v.split('.');
            let ma = it.next()?.parse::<u32>().ok()?;
            let mi = it.next().map(|m| m.parse::<u32>().ok());
            Some((ma, mi))
        });
        match named {
            Some((ma, mi)) if ma != major || mi.is_some_and(|mi| mi != Some(minor)) => {
                return Err(Error::Spec(format!(
                    "interpreter `{}` is not the target's CPython {major}.{minor}: wheels are chosen for \
                     cp{major}{minor} and installed into lib/python{major}.{minor}; name the image's python{major}.{minor}",
                    self.interpreter
                )));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Checks the in-image paths of a venv request (the interpreter: when named), before the
/// target is known.
pub fn validate_paths(venv: &str, interpreter: Option<&str>) -> Result<()> {
    for (what, p) in [("venv", Some(venv)), ("interpreter", interpreter)] {
        let Some(p) = p else { continue };
        if !p.starts_with('/')
            || p.split('/').any(|c| c == ".." || c == ".")
            || p.contains(['\n', '\0'])
        {
            return Err(Error::Spec(format!(
                "{what} `{p}` must be an absolute in-image path without `.` or `..`"
            )));
        }
    }
    if venv.trim_end_matches('/').is_empty() {
        return Err(Error::Spec("venv cannot be `/`".into()));
    }
    if let Some(i) = interpreter
        && i.ends_with('/')
    {
        return Err(Error::Spec(format!("interpreter `{i}` must name a file")));
    }
    Ok(())
}

/// A stable fingerprint (hex sha256) of a venv request whose target is not known yet:
/// [`fingerprint`] without the target, with the interpreter as the recipe names it
/// (`None`: the image's default). The target is read from the image at build time
/// ([`image_target`]): the caller makes what decides it (the layers below, the
/// layer's own packages) an input of its key.
pub fn request_fingerprint(
    venv: &str,
    interpreter: Option<&str>,
    bytecode: bool,
    reqs: &Requirements,
) -> String {
    let head = format!(
        "{FORMAT_VERSION}\ntarget from the image\nvenv={}\ninterpreter={}\nbytecode={bytecode}\n",
        venv.trim_end_matches('/'),
        interpreter.unwrap_or("(the image's default)")
    );
    hash_with_requirements(head, reqs)
}

/// A stable fingerprint (hex sha256) of everything that determines the layer: format
/// version, target, venv, interpreter, options, and every requirement (normalised name,
/// version, extras, marker, hashes), sorted. No network, no wheel reads. The index URL
/// is deliberately not part of it: the hashes pin the content wherever it comes from.
/// With `bytecode`, the `.pyc` files also depend on the image's interpreter: the caller
/// adds what decides it (the lower layers) to its own key.
pub fn fingerprint(spec: &VenvSpec, reqs: &Requirements) -> String {
    let mut text = String::new();
    let t = &spec.target;
    text.push_str(&format!("{FORMAT_VERSION}\n"));
    text.push_str(&format!(
        "target python={} libc={:?} arch={}\n",
        t.python_full_version, t.libc, t.arch
    ));
    text.push_str(&format!("venv={}\n", spec.venv.trim_end_matches('/')));
    text.push_str(&format!("interpreter={}\n", spec.interpreter));
    text.push_str(&format!("bytecode={}\n", spec.bytecode));
    hash_with_requirements(text, reqs)
}

/// `head` and every requirement (normalised name, version, extras, marker, hashes),
/// sorted, hashed.
fn hash_with_requirements(mut text: String, reqs: &Requirements) -> String {
    let mut rs: Vec<&Requirement> = reqs.requirements.iter().collect();
    rs.sort_by(|a, b| a.key.cmp(&b.key));
    for r in rs {
        let v = version::Version::parse(&r.version)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| r.version.clone());
        text.push_str(&format!("req {} =={} [{}]", r.key, v, r.extras.join(",")));
        if let Some(m) = &r.marker {
            text.push_str(&format!(" ; {m}"));
        }
        for h in &r.hashes {
            text.push_str(&format!(" {h}"));
        }
        if let Some(g) = &r.git {
            text.push_str(&format!(" git {} {}", g.url, g.commit));
        }
        text.push('\n');
    }
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const H: &str = "9362660c4a31150cf18e78cae2ce8aa1e929fc6c6739e69f6dd5dbea9c3edc82";

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let a = requirements::parse_requirements_str(
            &format!(
                "six==1.16.0 --hash=sha256:{H}\n# comment\nredis==5.0.1 \\\n --hash=sha256:{H}\n"
            ),
            Path::new("a.txt"),
        )
        .unwrap();
        // same content, other order, formatting, comments, name spelling and file name
        let b = requirements::parse_requirements_str(
            &format!(
                "Redis==5.0.1 --hash=sha256:{H}\nsix==1.16.0 --hash=sha256:{}\n",
                H.to_uppercase()
            ),
            Path::new("b.txt"),
        )
        .unwrap();
        let spec = VenvSpec::bookworm("a.txt", "/opt/venv");
        assert_eq!(fingerprint(&spec, &a), fingerprint(&spec, &b));
        assert_eq!(fingerprint(&spec, &a).len(), 64);
        let mut s2 = spec.clone();
        s2.bytecode = false;
        assert_ne!(fingerprint(&spec, &a), fingerprint(&s2, &a));
        let mut s3 = spec.clone();
        s3.target.python_full_version = "3.11.7".into();
        assert_ne!(fingerprint(&spec, &a), fingerprint(&s3, &a));
        let mut s4 = spec.clone();
        s4.venv = "/venv".into();
        assert_ne!(fingerprint(&spec, &a), fingerprint(&s4, &a));
        let c = requirements::parse_requirements_str(
            &format!("six==1.16.0 --hash=sha256:{H}\n"),
            Path::new("a.txt"),
        )
        .unwrap();
        assert_ne!(fingerprint(&spec, &a), fingerprint(&spec, &c));
    }

    #[test]
    fn spec_validation() {
        assert!(VenvSpec::bookworm("r", "/opt/venv").validate().is_ok());
        let with = |interpreter: &str| VenvSpec {
            interpreter: interpreter.into(),
            ..VenvSpec::bookworm("r", "/opt/venv")
        };
        for ok in [
            "/usr/bin/python3",
            "/usr/bin/python",
            "/usr/local/bin/python3.11",
        ] {
            assert!(with(ok).validate().is_ok(), "{ok}");
        }
        for bad in [
            "/usr/bin/python3.12",
            "/usr/bin/python2",
            "/usr/bin/python3.1",
        ] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("3.11"), "{e}");
        }
        assert!(VenvSpec::bookworm("r", "opt/venv").validate().is_err());
        assert!(VenvSpec::bookworm("r", "/opt/../venv").validate().is_err());
        assert!(VenvSpec::bookworm("r", "/").validate().is_err());
    }
}
