//! fwknop's saved command line (~/.fwknop.run, -E, -l, --show-last, --no-save-args,
//! NO_SAVE_ARGS), also across the real fwknop 2.6.10 client in both directions.
mod common;

use common::Env;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const KNOCK: [&str; 9] = [
    "-A",
    "tcp/22",
    "-a",
    "192.0.2.7",
    "-D",
    "127.0.0.1",
    "--key-rijndael",
    "abcdefgh",
    "-T",
];

fn message_string(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Message String: "))
        .unwrap_or_else(|| panic!("no Message String in {stdout}"))
}

fn fwknop(env: &Env, args: &[&str]) -> String {
    let out = Command::new("fwknop")
        .args(args)
        .env("HOME", env.home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fwknop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_knock_is_saved_shown_and_run_again_with_other_arguments_ignored() {
    let env = Env::new();
    env.ok(&KNOCK);
    let run = env.path(".fwknop.run");
    assert_eq!(
        std::fs::read_to_string(&run).unwrap(),
        format!("postern {} \n", KNOCK.join(" "))
    );
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        env.ok(&["--show-last"]).trim_end(),
        format!(
            "Last fwknop client command line: postern {}",
            KNOCK.join(" ")
        )
    );
    // -l runs the saved line; the -a given with it is ignored, as by fwknop.
    let again = env.ok(&["-l", "-a", "198.51.100.1", "-v"]);
    assert!(
        again.starts_with(&format!("Executing: postern {}", KNOCK.join(" "))),
        "{again}"
    );
    assert_eq!(message_string(&again), "192.0.2.7,tcp/22");
}

#[test]
fn no_save_args_and_the_rc_variable_keep_the_file_as_it_was() {
    let env = Env::new();
    let mut args = KNOCK.to_vec();
    args.push("--no-save-args");
    env.ok(&args);
    assert!(!env.path(".fwknop.run").exists());
    // NO_SAVE_ARGS in the rc file's [default] does the same.
    std::fs::write(env.rc_path(), "[default]\nNO_SAVE_ARGS Y\n").unwrap();
    std::fs::set_permissions(env.rc_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&KNOCK);
    assert!(!env.path(".fwknop.run").exists());
    let line = env.fails(&["--show-last"]);
    assert!(
        line.contains(".fwknop.run") && line.contains("cannot open"),
        "{line}"
    );
}

#[test]
fn save_args_file_names_where_the_line_goes_and_comes_from() {
    let env = Env::new();
    let file = env.path("ssh-gw.run");
    let mut args = vec!["-E", file.to_str().unwrap()];
    args.extend(KNOCK);
    env.ok(&args);
    assert!(!env.path(".fwknop.run").exists());
    assert!(std::fs::read_to_string(&file).unwrap().contains("tcp/22"));
    let again = env.ok(&["-l", "-E", file.to_str().unwrap()]);
    assert_eq!(message_string(&again), "192.0.2.7,tcp/22");
}

#[test]
fn a_run_file_others_may_write_is_refused() {
    let env = Env::new();
    env.ok(&KNOCK);
    let run = env.path(".fwknop.run");
    // Someone else could point the saved line at their own server.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o666)).unwrap();
    let line = env.fails(&["-l"]);
    assert!(line.contains("others may write it"), "{line}");
}

#[test]
fn fwknop_and_postern_read_each_others_saved_line() {
    let env = Env::new();
    // The real fwknop saves; postern shows and runs it.
    let fw_args = [
        "-A",
        "udp/53",
        "-a",
        "192.0.2.9",
        "-D",
        "127.0.0.1",
        "--key-rijndael",
        "abcdefgh",
        "-T",
    ];
    fwknop(&env, &fw_args);
    assert!(env
        .ok(&["--show-last"])
        .contains(&format!("fwknop {}", fw_args.join(" "))));
    assert_eq!(message_string(&env.ok(&["-l"])), "192.0.2.9,udp/53");
    // postern saves; the real fwknop runs it.
    env.ok(&KNOCK);
    assert_eq!(message_string(&fwknop(&env, &["-l"])), "192.0.2.7,tcp/22");
}
