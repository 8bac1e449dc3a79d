//! `imgbuild lock`: a plan of every recipe with every Debian layer resolved afresh
//! against the current (verified) index and every registry base given by tag resolved
//! again; its lock is written to `imgbuild.lock`. Nothing is built.

use anyhow::Result;

use crate::project::Project;

pub fn lock(project: &Project) -> Result<()> {
    // every platform of the project: the lock pins each architecture's packages
    let platforms =
        crate::platform::Selection::new(&crate::settings::Settings::load(&project.root)?, &[])?;
    let (plan, lock) = crate::builder::plan(project, None, false, true, &platforms)?;
    lock.save(&project.root)?;
    for c in &plan.lock_changes {
        project.progress.line(format!("lock: {c}"));
    }
    let pins: usize = lock.debian.values().map(|l| l.packages.len()).sum();
    project.progress.line(format!(
        "wrote {} ({pins} package pins, {} change(s))",
        crate::lockfile::FILE,
        plan.lock_changes.len()
    ));
    Ok(())
}
