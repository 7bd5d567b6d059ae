//! `[fleet]`: three posternd on one LAN share a real redis-server. A knock
//! reaching one opens the port on all three; a member killed and started
//! again catches up; with Redis down each member serves its own knocks (and
//! shares them once Redis is back, while they are live); a grant written into
//! Redis without the group key is refused.

use postern_e2e::fleet::{unix_now, Fleet, GROUP, PORT};
use postern_e2e::posternd::runnable;
use std::time::Duration;

#[test]
fn one_knock_opens_every_member_and_the_store_cannot_forge_grants() {
    if !runnable(&["nft", "redis-server", "redis-cli"]) {
        return;
    }
    let mut f = Fleet::new("fl");
    for i in 0..3 {
        assert!(!f.open(i), "member {} open before any knock", i + 1);
    }

    // 1. The knock reaches member 1; all three open (fan-out bound: 5 s).
    f.knock(0);
    for i in 0..3 {
        assert!(
            f.wait_open(i, true, Duration::from_secs(5)),
            "member {} did not open\n{}",
            i + 1,
            f.logs()
        );
    }
    assert!(f
        .daemon(1)
        .wait_log("fleet: granted", 1, Duration::from_secs(1)));
    f.all_closed_again();

    // 2. A grant written into Redis without the group key: refused by all.
    let forged = format!(
        "{{\"v\":1,\"group\":\"{GROUP}\",\"member\":\"m9\",\"issued_at\":1,\"openings\":\
         [{{\"source\":\"{}\",\"proto\":\"tcp\",\"port\":{PORT},\"timeout_secs\":30,\
         \"expires_at\":{}}}]}}",
        f.client(),
        unix_now() + 30
    );
    let stream = format!("postern:fleet:{GROUP}:grants");
    f.redis.cli(&[
        "XADD",
        &stream,
        "*",
        "grant",
        &forged,
        "mac",
        &"0".repeat(64),
    ]);
    f.redis.cli(&["XADD", &stream, "*", "grant", &forged]);
    for i in 0..3 {
        assert!(
            f.daemon(i).wait_log(
                "fleet: refused a stored grant: bad signature",
                2,
                Duration::from_secs(5)
            ),
            "member {} did not refuse the forged grants\n{}",
            i + 1,
            f.logs()
        );
    }
    for i in 0..3 {
        assert!(!f.open(i), "a forged grant opened member {}", i + 1);
    }

    // 3. Member 3 killed; a knock while it is down; started again, it catches up.
    f.members[2].daemon.as_mut().unwrap().kill9();
    f.members[2].daemon = None;
    f.knock(0);
    assert!(f.wait_open(0, true, Duration::from_secs(5)), "{}", f.logs());
    assert!(f.wait_open(1, true, Duration::from_secs(5)), "{}", f.logs());
    assert!(!f.open(2), "member 3 opened while down");
    f.start(2);
    assert!(
        f.wait_open(2, true, Duration::from_secs(5)),
        "member 3 did not catch up\n{}",
        f.logs()
    );
    f.all_closed_again();

    // 4. Redis down: member 2 still serves its own knock, and says so…
    f.redis.stop();
    f.knock(1);
    assert!(
        f.wait_open(1, true, Duration::from_secs(5)),
        "member 2 did not serve its own knock with Redis down\n{}",
        f.logs()
    );
    assert!(
        f.daemon(1)
            .wait_log("fleet: cannot publish a grant", 1, Duration::from_secs(5)),
        "{}",
        f.logs()
    );
    assert!(
        !f.open(0) && !f.open(2),
        "opened elsewhere without the store"
    );
    // …and shares it once Redis is back, while the grant is live.
    f.redis.spawn();
    for i in [0, 2] {
        assert!(
            f.wait_open(i, true, Duration::from_secs(8)),
            "member {} did not get the grant made while Redis was down\n{}",
            i + 1,
            f.logs()
        );
    }
    f.all_closed_again();
}
