# shellcheck shell=bash
# Shared by scripts/test.sh, scripts/demo.sh and scripts/install-deps.sh
# (sourced, not run).

# Makes `cargo` callable. Under `sudo`, root usually has no Rust toolchain of
# its own and sudo's secure_path drops ~/.cargo/bin: use the invoking user's
# rustup installation, and hand target/ back to that user when done.
pr_setup_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        local home=""
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
            home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        fi
        for h in "$home" "${HOME:-/root}" /root; do
            [ -n "$h" ] || continue
            if [ -x "$h/.cargo/bin/cargo" ]; then
                export PATH="$h/.cargo/bin:$PATH"
                [ -d "$h/.rustup" ] && export RUSTUP_HOME="${RUSTUP_HOME:-$h/.rustup}"
                export CARGO_HOME="${CARGO_HOME:-$h/.cargo}"
                break
            fi
        done
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install Rust with rustup (https://rustup.rs), then run this again." >&2
        return 1
    fi
}

# Under sudo, give target/ back to the user who ran sudo, so their own
# cargo builds keep working. Call from an EXIT trap.
pr_restore_target_owner() {
    if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ] && [ -d target ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" target 2>/dev/null || true
    fi
}
