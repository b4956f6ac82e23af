//! `wasi_snapshot_preview1`: exactly the 15 functions proxy-wasm-cpp-host gives a module
//! (`FOR_ALL_WASI_FUNCTIONS`), with its behaviour. Anything else (e.g. `poll_oneoff`,
//! `sched_yield`, `fd_filestat_get`) is *not* provided by Envoy, so `Vm::new` rejects a module
//! importing it, as Envoy would ("Failed to load Wasm module due to a missing import").
//!
//! Rust std on wasm32-wasip1 imports `fd_write`, `environ_get`, `environ_sizes_get`,
//! `proc_exit`, and `clock_time_get` / `random_get` when time or randomness is used.

use super::mem::{read, write, write_u32, write_u64, Cx};
use super::LogLevel;
use wasmtime::{Linker, Result};

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOENT: i32 = 44;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;
/// cpp-host's PROXY_WASM_HOST_WASI_RANDOM_GET_MAX_SIZE_BYTES.
const RANDOM_GET_MAX: i32 = 64 * 1024;

pub(super) fn define(linker: &mut Linker<super::HostState>) -> Result<()> {
    let w = "wasi_snapshot_preview1";

    // stdout/stderr go to the log as info/error (one trailing newline stripped); other fds: EBADF.
    linker.func_wrap(
        w,
        "fd_write",
        |mut c: Cx<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> Result<i32> {
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return Ok(EBADF),
            };
            let mut text = Vec::new();
            for i in 0..iovs_len {
                let Some(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return Ok(EFAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Some(bytes) = read(&mut c, ptr, len) else {
                    return Ok(EFAULT);
                };
                text.extend(bytes);
            }
            let written = text.len() as u32;
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            if written != 0 {
                let fd_name = if fd == 1 { "stdout" } else { "stderr" };
                let line = format!("[{fd_name}] {}", String::from_utf8_lossy(&text));
                c.data_mut().log(level, line);
            }
            Ok(if write_u32(&mut c, nwritten, written) {
                SUCCESS
            } else {
                EFAULT
            })
        },
    )?;
    linker.func_wrap(w, "fd_read", |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| {
        ENOSYS
    })?;
    // cpp-host answers 0 without writing anything.
    linker.func_wrap(w, "fd_seek", |_: Cx<'_>, _: i32, _: i64, _: i32, _: i32| {
        SUCCESS
    })?;
    linker.func_wrap(w, "fd_close", |_: Cx<'_>, _: i32| SUCCESS)?;
    // Only stdout/stderr exist: filetype 0, rights = FD_WRITE.
    linker.func_wrap(w, "fd_fdstat_get", |mut c: Cx<'_>, fd: i32, out: i32| {
        if fd != 1 && fd != 2 {
            return EBADF;
        }
        let mut stat = [0u8; 24];
        stat[8] = 64;
        if write(&mut c, out, &stat) {
            SUCCESS
        } else {
            EFAULT
        }
    })?;
    linker.func_wrap(w, "fd_prestat_get", |_: Cx<'_>, _: i32, _: i32| EBADF)?;
    linker.func_wrap(
        w,
        "fd_prestat_dir_name",
        |_: Cx<'_>, _: i32, _: i32, _: i32| ENOSYS,
    )?;
    linker.func_wrap(
        w,
        "path_open",
        |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| ENOENT,
    )?;

    // The VM environment (Envoy: vm_config.environment_variables; Istio: vmConfig.env).
    linker.func_wrap(
        w,
        "environ_sizes_get",
        |mut c: Cx<'_>, count: i32, size: i32| {
            let env = &c.data().env;
            let n = env.len() as u32;
            let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if write_u32(&mut c, count, n) && write_u32(&mut c, size, bytes as u32) {
                SUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        w,
        "environ_get",
        |mut c: Cx<'_>, mut ptrs: i32, mut buf: i32| {
            for (k, v) in c.data().env.clone() {
                let entry = format!("{k}={v}\0");
                if !write_u32(&mut c, ptrs, buf as u32) || !write(&mut c, buf, entry.as_bytes()) {
                    return EFAULT;
                }
                ptrs += 4;
                buf += entry.len() as i32;
            }
            SUCCESS
        },
    )?;
    linker.func_wrap(
        w,
        "args_sizes_get",
        |mut c: Cx<'_>, argc: i32, size: i32| {
            if write_u32(&mut c, argc, 0) && write_u32(&mut c, size, 0) {
                SUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(w, "args_get", |_: Cx<'_>, _: i32, _: i32| SUCCESS)?;

    // Clock 0 = realtime (the test-controlled wall clock), 1 = monotonic; others ENOTSUP.
    linker.func_wrap(
        w,
        "clock_time_get",
        |mut c: Cx<'_>, id: i32, _: i64, out: i32| {
            let now = match id {
                0 => c.data().now_ns,
                1 => c.data().monotonic_ns,
                _ => return ENOTSUP,
            };
            if write_u64(&mut c, out, now) {
                SUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    // Deterministic bytes (splitmix64, seed settable with `Vm::seed`).
    linker.func_wrap(w, "random_get", |mut c: Cx<'_>, buf: i32, len: i32| {
        if !(0..=RANDOM_GET_MAX).contains(&len) {
            return EINVAL;
        }
        let bytes: Vec<u8> = (0..len).map(|_| c.data_mut().next_random()).collect();
        if write(&mut c, buf, &bytes) {
            SUCCESS
        } else {
            EFAULT
        }
    })?;
    // The guest cannot continue after proc_exit; surface it as a trap.
    linker.func_wrap(w, "proc_exit", |_: Cx<'_>, code: i32| -> Result<()> {
        Err(wasmtime::Error::msg(format!(
            "guest called proc_exit({code})"
        )))
    })?;
    Ok(())
}
