//! `imgbuild setup`: the stack's .env, created with generated secrets, 0600, never
//! overwritten without --force.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

#[test]
fn setup_writes_a_private_env_file_with_strong_secrets_once() {
    let f = Fixture::new("hello");
    let deploy = f.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    std::fs::copy(
        repo_root().join("deploy/.env.example"),
        deploy.join(".env.example"),
    )
    .unwrap();
    let out = f.run(&[
        "setup",
        "--non-interactive",
        "--set",
        "ADMIN_USER=root2",
        "--set",
        "NGINX_PORT=18123",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env_path = deploy.join(".env");
    let env = std::fs::read_to_string(&env_path).unwrap();
    assert_eq!(
        std::fs::metadata(&env_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing:\n{env}"))
            .to_owned()
    };
    let secrets: Vec<String> = [
        "POSTGRES_PASSWORD",
        "APP_DB_PASSWORD",
        "RABBITMQ_DEFAULT_PASS",
        "SECRET_KEY",
        "ADMIN_PASSWORD",
    ]
    .iter()
    .map(|k| get(k))
    .collect();
    for s in &secrets {
        assert_eq!(s.len(), 48, "{s}");
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let mut uniq = secrets.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), secrets.len(), "secrets must differ");
    assert_eq!(get("ADMIN_USER"), "root2");
    assert_eq!(get("NGINX_PORT"), "18123");
    assert!(!env.contains("change-me"));
    // The values are never printed.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        secrets.iter().all(|s| !printed.contains(s.as_str())),
        "{printed}"
    );
    // Not overwritten without --force; replaced with it.
    let again = f.run(&["setup", "--non-interactive"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&env_path).unwrap(), env);
    assert!(
        f.run(&["setup", "--non-interactive", "--force"])
            .status
            .success()
    );
    assert_ne!(std::fs::read_to_string(&env_path).unwrap(), env);
    // A key the template does not know is refused.
    let bad = f.run(&["setup", "--non-interactive", "--force", "--set", "NOPE=1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`NOPE` is not in the template"));
}
