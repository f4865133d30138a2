//! Where the programs keep per-thread syscall state: task local storage (`TASK_STATE`) on kernels
//! whose tracing programs may use it (5.12), else a hash map by thread id (`TASKS`). The loader
//! creates every map of the object, and older kernels cannot create a task-storage map: for them
//! the object's BTF is patched so that `TASK_STATE` is a one-entry hash map the programs never use.

/// The task-storage map of the object.
pub const MAP: &str = "TASK_STATE";

/// Whether tracing programs may use task local storage on this kernel (Linux 5.12,
/// `bpf: Enable task local storage for tracing programs`).
pub fn supported(kernel_version: (u32, u32)) -> bool {
    kernel_version >= (5, 12)
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the eBPF object is not a readable ELF file")]
    Elf(#[from] object::read::Error),
    #[error("the eBPF object has no readable BTF for map {MAP}: {0}")]
    Btf(&'static str),
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_KIND_VAR: u32 = 14;
const BTF_KIND_DATASEC: u32 = 15;
const BTF_KIND_DECL_TAG: u32 = 17;
const BTF_KIND_ENUM64: u32 = 19;
const BPF_MAP_TYPE_HASH: u32 = 1;

/// The BTF section of an object, read in place.
struct Btf<'a> {
    data: &'a [u8],
    /// Offset of each type (by id; 0 is void) in `data`.
    types: Vec<usize>,
    strings: usize,
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, PatchError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(PatchError::Btf("bad BTF magic"));
        }
        let mut btf = Self { data, types: vec![0], strings: 0 };
        let header = |o| btf.u32_at(o).map_err(|_| PatchError::Btf("short BTF header"));
        let (hdr_len, type_off, type_len, str_off) = (header(4)?, header(8)?, header(12)?, header(16)?);
        let start = (hdr_len + type_off) as usize;
        let end = start + type_len as usize;
        let mut o = start;
        while o < end {
            let info = btf.u32_at(o + 4).map_err(|_| PatchError::Btf("truncated type"))?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                BTF_KIND_INT | BTF_KIND_VAR | BTF_KIND_DECL_TAG => 4,
                BTF_KIND_ARRAY => 12,
                BTF_KIND_STRUCT | BTF_KIND_UNION | BTF_KIND_DATASEC | BTF_KIND_ENUM64 => 12 * vlen,
                BTF_KIND_ENUM | BTF_KIND_FUNC_PROTO => 8 * vlen,
                0..=19 => 0,
                _ => return Err(PatchError::Btf("unknown BTF kind")),
            };
            btf.types.push(o);
            o += 12 + extra;
        }
        btf.strings = (hdr_len + str_off) as usize;
        Ok(btf)
    }

    fn u32_at(&self, o: usize) -> Result<u32, PatchError> {
        self.data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or(PatchError::Btf("truncated"))
    }

    fn ty(&self, id: u32) -> Result<(usize, u32, usize, u32), PatchError> {
        let o = *self.types.get(id as usize).filter(|&&o| o != 0).ok_or(PatchError::Btf("bad type id"))?;
        let info = self.u32_at(o + 4)?;
        Ok((o, (info >> 24) & 0x1f, (info & 0xffff) as usize, self.u32_at(o + 8)?))
    }

    fn name(&self, name_off: u32) -> &'a [u8] {
        let s = self.data.get(self.strings + name_off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// Offset of the `nelems` of the array that member `member` of map `map`'s definition points
    /// to (`__uint(member, N)` is `int (*member)[N]`).
    fn map_field(&self, map: &str, member: &str) -> Result<usize, PatchError> {
        for id in 1..self.types.len() as u32 {
            let (o, kind, vlen, _) = self.ty(id)?;
            if kind != BTF_KIND_DATASEC || self.name(self.u32_at(o)?) != b".maps" {
                continue;
            }
            for i in 0..vlen {
                let (var, var_kind, _, var_type) = self.ty(self.u32_at(o + 12 + 12 * i)?)?;
                if var_kind != BTF_KIND_VAR || self.name(self.u32_at(var)?) != map.as_bytes() {
                    continue;
                }
                let (def, def_kind, members, _) = self.ty(var_type)?;
                if def_kind != BTF_KIND_STRUCT {
                    return Err(PatchError::Btf("map definition is not a struct"));
                }
                for m in 0..members {
                    let mo = def + 12 + 12 * m;
                    if self.name(self.u32_at(mo)?) != member.as_bytes() {
                        continue;
                    }
                    let (_, ptr_kind, _, pointee) = self.ty(self.u32_at(mo + 4)?)?;
                    let (arr, arr_kind, _, _) = self.ty(pointee)?;
                    if ptr_kind != BTF_KIND_PTR || arr_kind != BTF_KIND_ARRAY {
                        return Err(PatchError::Btf("map field is not a pointer to an array"));
                    }
                    return Ok(arr + 12 + 8);
                }
                return Err(PatchError::Btf("map definition lacks a field"));
            }
        }
        Err(PatchError::Btf("no such map in .maps"))
    }
}

/// A copy of `object` whose `TASK_STATE` is a one-entry hash map (with the same key, value and
/// flags), which every kernel with BTF can create. 8-byte aligned, as the ELF parser wants.
pub fn without_task_storage(object: &[u8]) -> Result<AlignedObject, PatchError> {
    let (start, len) = {
        use object::{Object as _, ObjectSection as _};
        let file = object::File::parse(object)?;
        let section = file.section_by_name(".BTF").ok_or(PatchError::Btf("no .BTF section"))?;
        section.file_range().ok_or(PatchError::Btf(".BTF has no file range"))?
    };
    let range = start as usize..(start + len) as usize;
    let (type_at, entries_at) = {
        let btf = Btf::parse(object.get(range.clone()).ok_or(PatchError::Btf(".BTF out of the file"))?)?;
        (btf.map_field(MAP, "type")?, btf.map_field(MAP, "max_entries")?)
    };
    let mut copy = AlignedObject::new(object);
    let btf = &mut copy.bytes_mut()[range];
    btf[type_at..type_at + 4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_le_bytes());
    btf[entries_at..entries_at + 4].copy_from_slice(&1u32.to_le_bytes());
    Ok(copy)
}

/// The object to load: the embedded one where the kernel layout has `HAS_TASK_STORAGE`, else
/// the patched copy.
pub enum LoadObject {
    Embedded(&'static [u8]),
    Patched(AlignedObject),
}

impl LoadObject {
    pub fn for_flags(object: &'static [u8], flags: u32) -> Result<Self, PatchError> {
        Ok(if flags & agent_common::config_flags::HAS_TASK_STORAGE != 0 {
            LoadObject::Embedded(object)
        } else {
            LoadObject::Patched(without_task_storage(object)?)
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            LoadObject::Embedded(b) => b,
            LoadObject::Patched(o) => o.bytes(),
        }
    }
}

/// An object's bytes in an 8-byte aligned buffer.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn new(bytes: &[u8]) -> Self {
        let mut object = Self { words: vec![0; bytes.len().div_ceil(8)], len: bytes.len() };
        object.bytes_mut().copy_from_slice(bytes);
        object
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: u64 has no invalid bit patterns and `words` holds at least `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patched object's TASK_STATE, as the loader reads it, is a one-entry hash map with the
    /// original key, value and flags; the unpatched one a task-storage map. Needs the built object.
    #[test]
    fn task_state_becomes_a_hash_map_for_old_kernels() {
        let original = crate::probes::EBPF_OBJECT;
        if original.is_empty() {
            eprintln!("AYA_BUILD_SKIP: no eBPF object; skipping");
            return;
        }
        let before = aya_obj::Object::parse(original).unwrap();
        let m = &before.maps[MAP];
        assert_eq!((m.map_type(), m.max_entries()), (aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as u32, 0));
        let patched = without_task_storage(original).unwrap();
        let after = aya_obj::Object::parse(patched.bytes()).unwrap();
        let p = &after.maps[MAP];
        assert_eq!((p.map_type(), p.max_entries()), (BPF_MAP_TYPE_HASH, 1));
        assert_eq!((p.key_size(), p.value_size(), p.map_flags()), (m.key_size(), m.value_size(), m.map_flags()));
        // Nothing else moved: every other map and program is as before.
        assert_eq!(after.maps.len(), before.maps.len());
        assert_eq!(after.programs.len(), before.programs.len());
        assert_eq!(patched.bytes().len(), original.len());
        let differing = original.iter().zip(patched.bytes()).filter(|(a, b)| a != b).count();
        assert!(differing <= 8, "{differing} bytes changed");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(without_task_storage(b"not an elf").is_err());
        let mut btf = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        btf.extend_from_slice(&[0; 8]);
        assert!(Btf::parse(&btf).and_then(|b| b.map_field(MAP, "type")).is_err());
    }
}
