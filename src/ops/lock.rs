//! `imgbuild lock`: resolves every Debian layer of every recipe against the current
//! (verified) index and writes `imgbuild.lock`. Nothing is built.

use anyhow::Result;

use crate::project::Project;
use crate::recipe::RecipeSet;
use crate::source::Session;

pub fn lock(project: &Project) -> Result<()> {
    let set = RecipeSet::load(&project.root)?;
    let session = Session::new(project, false, true)?;
    let mut n = 0;
    // Registry bases given by tag are resolved afresh too.
    session.debian.lock.lock().expect("lock").bases.clear();
    for r in set.recipes.values() {
        if let crate::recipe::From::Registry(raw) = &r.from.value
            && !raw.contains('@')
        {
            crate::source::base::load(&session, r, raw)?;
        }
        for (i, l) in r.layers.iter().enumerate() {
            if let Some(d) = &l.debian {
                n += session.debian.packages_for(r, i, d)?.0.len();
            }
        }
    }
    session
        .debian
        .prune_lock(&crate::ops::build::live_debian_layers(&set));
    project.progress.clear();
    session
        .debian
        .lock
        .lock()
        .expect("lock")
        .save(&project.root)?;
    project.progress.line(format!(
        "wrote {} ({n} package pins)",
        crate::lockfile::FILE
    ));
    Ok(())
}
