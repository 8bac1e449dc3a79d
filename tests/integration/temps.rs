//! Temp files beside outputs (`out/`) follow the store's owner scheme: a writer's
//! temp files carry its owner name, and its `.alive` file is locked while it runs.
//! A build removes the temp files of writers whose lock is free and keeps those of
//! live ones, whatever their PID (another PID namespace, a reused PID).

use std::fs;

use crate::support::*;

#[test]
fn a_build_removes_the_temps_of_dead_writers_in_out_and_keeps_live_ones() {
    let f = Fixture::new("hello");
    f.build_json(&["all"]);
    let out = f.path().join("out");
    let blobs = out.join("oci/blobs/sha256");
    // A writer that was killed: its lock file is there, nobody holds it.
    for dir in [&out, &blobs] {
        fs::write(dir.join(".111x1x0.alive"), b"").unwrap();
        fs::write(dir.join(".hello.tar.111x1x0-3.tmp"), b"half a tarball").unwrap();
    }
    // A writer that runs (this test process holds its lock), with this test's PID
    // nowhere in the names: only the lock tells that it is alive.
    let live_lock = fs::File::create(out.join(".222x2x0.alive")).unwrap();
    live_lock.lock().unwrap();
    fs::write(out.join(".other.tar.222x2x0-0.tmp"), b"being written").unwrap();
    // Not a temp file of ours: a user's hidden file that merely looks alike.
    fs::write(out.join(".notes.alive"), b"mine").unwrap();

    f.build_json(&["all"]);
    for dir in [&out, &blobs] {
        assert!(!dir.join(".111x1x0.alive").exists(), "{}", dir.display());
        assert!(
            !dir.join(".hello.tar.111x1x0-3.tmp").exists(),
            "{}",
            dir.display()
        );
    }
    assert!(out.join(".222x2x0.alive").exists());
    assert!(out.join(".other.tar.222x2x0-0.tmp").exists());
    assert!(out.join(".notes.alive").exists());

    // Once that writer is gone (its lock released), the next build removes its temp.
    drop(live_lock);
    f.build_json(&["all"]);
    assert!(!out.join(".other.tar.222x2x0-0.tmp").exists());
    assert!(!out.join(".222x2x0.alive").exists());
    assert!(out.join(".notes.alive").exists());
}
