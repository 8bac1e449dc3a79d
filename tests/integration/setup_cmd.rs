//! `imgbuild setup`: the stack's .env, created with generated secrets and broker
//! user, 0600, never put over anything that exists (a dangling symlink included)
//! without --force; values compose would misread are refused, from `--set` and at
//! the prompt (driven through a real pseudo-terminal with `script`).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// A fixture with the stack's env template in deploy/.
fn with_template() -> Fixture {
    let f = Fixture::new("hello");
    let deploy = f.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    std::fs::copy(
        repo_root().join("deploy/.env.example"),
        deploy.join(".env.example"),
    )
    .unwrap();
    f
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn env_value(env: &str, k: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")))
        .unwrap_or_else(|| panic!("{k} missing:\n{env}"))
        .to_owned()
}

#[test]
fn setup_writes_a_private_env_file_with_strong_secrets_once() {
    let f = with_template();
    let deploy = f.path().join("deploy");
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
    let get = |k: &str| env_value(&env, k);
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
    // the broker user is generated too: stack_ and 8 hex digits
    let broker_user = get("RABBITMQ_DEFAULT_USER");
    assert!(
        broker_user.len() == 14
            && broker_user.starts_with("stack_")
            && broker_user[6..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{broker_user}"
    );
    assert!(!env.contains("XXXX") && !env.contains("\n##"), "{env}");
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
    let replaced = std::fs::read_to_string(&env_path).unwrap();
    assert_ne!(replaced, env);
    assert_ne!(env_value(&replaced, "RABBITMQ_DEFAULT_USER"), broker_user);
    // A key the template does not know is refused.
    let bad = f.run(&["setup", "--non-interactive", "--force", "--set", "NOPE=1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`NOPE` is not in the template"));
}

#[test]
fn setup_never_puts_the_file_over_a_symlink_or_an_existing_file() {
    use std::os::unix::fs::symlink;
    let f = with_template();
    let env_path = f.path().join("deploy/.env");
    // A dangling symlink: nothing "exists" behind it, but it is not replaced and
    // its target is not created (the link is never followed).
    let elsewhere = f.path().join("elsewhere.env");
    symlink(&elsewhere, &env_path).unwrap();
    let out = f.run(&["setup", "--non-interactive"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(
        std::fs::symlink_metadata(&env_path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!elsewhere.exists());
    // A symlink to an existing file: refused, the file is untouched.
    std::fs::write(&elsewhere, "KEEP=1\n").unwrap();
    let out = f.run(&["setup", "--non-interactive"]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "KEEP=1\n");
    // --force replaces the link itself with a private file; its target is untouched.
    let out = f.run(&["setup", "--non-interactive", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = std::fs::symlink_metadata(&env_path).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "KEEP=1\n");
    // No temp file is left in deploy/.
    let names: Vec<_> = std::fs::read_dir(f.path().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn setup_refuses_values_that_would_break_the_urls_or_the_env_file() {
    let f = with_template();
    let env_path = f.path().join("deploy/.env");
    for (kv, key, what) in [
        ("APP_DB_PASSWORD=p@ss/word", "APP_DB_PASSWORD", "`@`"),
        (
            "RABBITMQ_DEFAULT_USER=us:er",
            "RABBITMQ_DEFAULT_USER",
            "`:`",
        ),
        ("RABBITMQ_DEFAULT_PASS=a#b", "RABBITMQ_DEFAULT_PASS", "`#`"),
        ("APP_DB_NAME=db?x", "APP_DB_NAME", "`?`"),
        ("APP_DB_USER=", "APP_DB_USER", "may not be empty"),
        ("ADMIN_PASSWORD=two words", "ADMIN_PASSWORD", "a space"),
        ("SECRET_KEY=a$b", "SECRET_KEY", "`$`"),
        ("ADMIN_USER=quo\"te", "ADMIN_USER", "`\"`"),
    ] {
        let out = f.run(&["setup", "--non-interactive", "--set", kv]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{kv} accepted");
        assert!(err.contains(key) && err.contains(what), "{kv}: {err}");
        let value = kv.split_once('=').unwrap().1;
        assert!(
            value.is_empty() || !err.contains(value),
            "{kv}: the value is echoed: {err}"
        );
        assert!(!env_path.exists(), "{kv}: a file was written");
    }
    // URL characters are fine where compose builds no URL; a broker user can be given.
    let out = f.run(&[
        "setup",
        "--non-interactive",
        "--set",
        "ADMIN_PASSWORD=p@ss:w/rd?%",
        "--set",
        "RABBITMQ_DEFAULT_USER=broker.user-1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = std::fs::read_to_string(&env_path).unwrap();
    assert_eq!(env_value(&env, "ADMIN_PASSWORD"), "p@ss:w/rd?%");
    assert_eq!(env_value(&env, "RABBITMQ_DEFAULT_USER"), "broker.user-1");
    // docker-compose reads them back unchanged.
    require("docker-compose");
    std::fs::write(
        f.path().join("deploy/compose.yaml"),
        "services:\n  x:\n    image: scratch\n    environment:\n      P: \"${ADMIN_PASSWORD}\"\n      U: \"amqp://${RABBITMQ_DEFAULT_USER}:${RABBITMQ_DEFAULT_PASS}@rabbitmq:5672//\"\n",
    )
    .unwrap();
    let config = run_ok(
        Command::new("docker-compose")
            .arg("-f")
            .arg(f.path().join("deploy/compose.yaml"))
            .arg("config"),
    );
    assert!(config.contains("P: p@ss:w/rd?%"), "{config}");
    assert!(
        config.contains(&format!(
            "U: amqp://broker.user-1:{}@rabbitmq:5672//",
            env_value(&env, "RABBITMQ_DEFAULT_PASS")
        )),
        "{config}"
    );
}

/// `imgbuild` on a pseudo-terminal (util-linux `script`): answers are typed only
/// once the expected prompt is on the screen, as a person would.
struct Terminal {
    child: std::process::Child,
    screen: Arc<Mutex<String>>,
    seen: usize,
}

impl Terminal {
    fn start(f: &Fixture, args: &str) -> Terminal {
        require("script");
        let cmd = format!(
            "{} -C {} --store {} {args}",
            env!("CARGO_BIN_EXE_imgbuild"),
            f.path().display(),
            f.store.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let (mut out, s) = (child.stdout.take().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            child,
            screen,
            seen: 0,
        }
    }

    /// Waits for `text` after what was already matched; returns the screen in between.
    fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen.lock().unwrap().clone();
            if let Some(i) = screen[self.seen..].find(text) {
                let between = screen[self.seen..self.seen + i].to_owned();
                self.seen += i + text.len();
                return between;
            }
            assert!(
                Instant::now() < deadline,
                "no `{text}` on the terminal:\n{}",
                &screen[self.seen..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let screen = self.screen.lock().unwrap().clone();
        (status.success(), screen)
    }
}

#[test]
fn setup_asks_on_a_terminal_and_asks_again_for_an_unusable_answer() {
    let f = with_template();
    let mut t = Terminal::start(&f, "setup");
    t.expect("POSTGRES_PASSWORD (secret; Enter = generate): ");
    t.type_line("");
    t.expect("APP_DB_USER [app]: ");
    t.type_line("");
    t.expect("APP_DB_NAME [app]: ");
    t.type_line("appdb");
    t.expect("APP_DB_PASSWORD (secret; Enter = generate): ");
    t.type_line("p@ss");
    let refused = t.expect("APP_DB_PASSWORD (secret; Enter = generate): ");
    assert!(
        refused.contains("APP_DB_PASSWORD: `@` cannot be used") && refused.contains("try again"),
        "{refused}"
    );
    assert!(
        !refused.contains("p@ss"),
        "the secret was echoed: {refused}"
    );
    t.type_line("typed-Secret_1");
    let generated_user = t.expect("]: ");
    assert!(
        generated_user.contains("RABBITMQ_DEFAULT_USER [stack_"),
        "{generated_user}"
    );
    t.type_line("bad user");
    let refused = t.expect("RABBITMQ_DEFAULT_USER [stack_");
    assert!(refused.contains("a space cannot be used"), "{refused}");
    t.expect("]: ");
    t.type_line("");
    for prompt in [
        "RABBITMQ_DEFAULT_PASS (secret; Enter = generate): ",
        "SECRET_KEY (secret; Enter = generate): ",
        "ADMIN_USER [admin]: ",
        "ADMIN_PASSWORD (secret; Enter = generate): ",
    ] {
        t.expect(prompt);
        t.type_line("");
    }
    let (ok, screen) = t.finish();
    assert!(ok, "{screen}");
    assert!(
        !screen.contains("typed-Secret_1"),
        "a secret was echoed: {screen}"
    );
    let env = std::fs::read_to_string(f.path().join("deploy/.env")).unwrap();
    assert_eq!(env_value(&env, "APP_DB_NAME"), "appdb");
    assert_eq!(env_value(&env, "APP_DB_USER"), "app");
    assert_eq!(env_value(&env, "APP_DB_PASSWORD"), "typed-Secret_1");
    let user = env_value(&env, "RABBITMQ_DEFAULT_USER");
    assert!(user.starts_with("stack_") && user.len() == 14, "{user}");
    assert_eq!(env_value(&env, "POSTGRES_PASSWORD").len(), 48);
}
