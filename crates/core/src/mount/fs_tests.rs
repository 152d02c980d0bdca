//! Unit tests of the view's encodings.

use super::*;

#[test]
fn device_numbers_use_the_protocol_encoding() {
    // Small numbers look the same in both encodings; large minors move above the major.
    assert_eq!(kernel_rdev(libc::makedev(1, 3)), 0x103);
    assert_eq!(
        kernel_rdev(libc::makedev(7, 300)),
        (300 & 0xff) | (7 << 8) | (256 << 12)
    );
}

#[test]
fn times_before_the_epoch_keep_their_nanoseconds() {
    let t = system_time(Timestamp {
        secs: -2,
        nanos: 500,
    });
    assert_eq!(
        UNIX_EPOCH.duration_since(t).unwrap(),
        Duration::new(1, 999_999_500)
    );
}
