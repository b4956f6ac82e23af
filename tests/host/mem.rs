//! Guest memory access and the proxy-wasm "pairs" encoding.
//!
//! Data flows into the guest the way proxy-wasm-cpp-host does it (`copyToPointerSize`):
//! the host calls the guest's exported `proxy_on_memory_allocate(size)` (re-entrantly, from
//! inside the import being served), copies the bytes there and writes `(ptr, len)` as two
//! little-endian u32 into the guest's return pointers. The guest owns (and frees) that buffer.
//! An empty value is returned as `(0, 0)` without allocating; the SDK turns a null pointer
//! into `None` / an empty value.

use super::{HostState, Status};
use wasmtime::{Caller, Extern, Memory};

pub(super) type Cx<'a> = Caller<'a, HostState>;

/// The guest's export `name`: from the calling instance, or (an import called through the
/// counting wrapper of `Vm::counting_host_calls`, which has no calling instance) the VM's.
fn export(c: &mut Cx<'_>, name: &str) -> Option<Extern> {
    c.get_export(name).or_else(|| {
        let instance = c.data().instance?;
        instance.get_export(&mut *c, name)
    })
}

fn memory(c: &mut Cx<'_>) -> Option<Memory> {
    export(c, "memory").and_then(Extern::into_memory)
}

/// Copies `len` bytes at `ptr` out of guest memory; `None` when out of bounds.
pub(super) fn read(c: &mut Cx<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(c)?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    mem.data(&*c).get(start..end).map(<[u8]>::to_vec)
}

/// Copies `bytes` into guest memory at `ptr`; false when out of bounds.
pub(super) fn write(c: &mut Cx<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = memory(c) else { return false };
    let start = ptr as u32 as usize;
    match mem.data_mut(&mut *c).get_mut(start..start + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

pub(super) fn write_u32(c: &mut Cx<'_>, ptr: i32, value: u32) -> bool {
    write(c, ptr, &value.to_le_bytes())
}

pub(super) fn write_u64(c: &mut Cx<'_>, ptr: i32, value: u64) -> bool {
    write(c, ptr, &value.to_le_bytes())
}

/// Allocates `bytes.len()` bytes with the guest's `proxy_on_memory_allocate` (or legacy
/// `malloc`) and copies `bytes` there. `Ok(None)` when the allocator returned 0; `Err` (a trap)
/// when the allocator itself trapped.
pub(super) fn alloc(c: &mut Cx<'_>, bytes: &[u8]) -> wasmtime::Result<Option<u32>> {
    let Some(func) = export(c, "proxy_on_memory_allocate")
        .or_else(|| export(c, "malloc"))
        .and_then(Extern::into_func)
    else {
        return Err(wasmtime::Error::msg(
            "guest exports neither proxy_on_memory_allocate nor malloc",
        ));
    };
    let func = func.typed::<i32, i32>(&*c)?;
    let ptr = func.call(&mut *c, bytes.len() as i32)?;
    if ptr == 0 || !write(c, ptr, bytes) {
        return Ok(None);
    }
    Ok(Some(ptr as u32))
}

/// Returns `bytes` to the guest through `(*ptr_ptr, *size_ptr)`; the status to hand back.
pub(super) fn give(
    c: &mut Cx<'_>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> wasmtime::Result<i32> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        match alloc(c, bytes)? {
            Some(ptr) => ptr,
            None => return Ok(Status::InvalidMemoryAccess as i32),
        }
    };
    if write_u32(c, ptr_ptr, ptr) && write_u32(c, size_ptr, bytes.len() as u32) {
        Ok(Status::Ok as i32)
    } else {
        Ok(Status::InvalidMemoryAccess as i32)
    }
}

/// Encodes header pairs: `u32 count`, `count × (u32 key_len, u32 value_len)`, then
/// `key \0 value \0` for each pair (all integers little-endian).
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend((k.as_ref().len() as u32).to_le_bytes());
        out.extend((v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend(k.as_ref());
        out.push(0);
        out.extend(v.as_ref());
        out.push(0);
    }
    out
}

/// Decodes header pairs; `None` when malformed (cpp-host then silently uses an empty list).
/// Keys are header names and decoded lossily as UTF-8; values stay bytes.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.len() < 4 {
        return if bytes.is_empty() {
            Some(Vec::new())
        } else {
            None
        };
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    if data > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (klen, vlen) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let key = bytes.get(data..data + klen)?;
        if *bytes.get(data + klen)? != 0 {
            return None;
        }
        data += klen + 1;
        let value = bytes.get(data..data + vlen)?;
        if *bytes.get(data + vlen)? != 0 {
            return None;
        }
        data += vlen + 1;
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(out)
}
