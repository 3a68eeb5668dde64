//! Writes the L4 table into the kernel maps, by diff and in the safe order
//! that `l4sync::plan` gives.

use std::os::fd::AsFd;

use aya::maps::{
    Array, HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ingress_common::l4::{
    BackendValue, L4_BACKENDS, L4_MAGLEV, L4_PORTS, L4_SERVICES, L4_SOURCE_RANGES, NO_BACKEND,
    RangeKey, ServiceKey, ServiceValue,
};

use super::{
    DatapathError, LoadedPrograms, batch,
    l4sync::{CapacityError, Ids, MapImage, MapOp, plan},
    pin::{self, CONFIG_MAPS, PinLayout},
};
use crate::model::l4::L4Table;

/// The L4 maps of a loaded object, and what they hold now.
pub struct L4Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, BackendValue>,
    maglev: Array<MapData, u32>,
    /// The Maglev array's fd for batch writes (aya's `Array` keeps its own).
    maglev_fd: std::os::fd::OwnedFd,
    /// The Maglev array mapped into this process, where the kernel allows.
    maglev_mapped: Option<batch::MappedArray>,
    ranges: LpmTrie<MapData, RangeKey, u8>,
    ports: Array<MapData, u8>,
    ids: Ids,
    image: MapImage,
    table_size: u32,
    /// Config maps staged under bpffs, published (renamed over the pins
    /// tools read) once the first image is written.
    staged: Option<PinLayout>,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl L4Maps {
    /// Takes the maps out of `programs`. With a pin directory, the fresh
    /// config maps are pinned under staging names right away.
    pub fn take(programs: &mut LoadedPrograms) -> Result<Self, DatapathError> {
        let staged = programs.options.pins.clone();
        if let Some(layout) = &staged {
            for name in CONFIG_MAPS {
                let path = layout.staged_map(name);
                pin::remove_file(&path)?;
                programs
                    .ebpf
                    .map(name)
                    .ok_or(DatapathError::MissingMap(name))?
                    .pin(&path)
                    .map_err(|source| DatapathError::PinObject {
                        what: format!("map {name} at {}", path.display()),
                        source,
                    })?;
            }
        }
        let table_size = programs.options.maglev_size;
        let max_backends = programs.options.max_backends;
        let mut take = |name: &'static str| {
            programs
                .ebpf
                .take_map(name)
                .ok_or(DatapathError::MissingMap(name))
        };
        let services = HashMap::try_from(take(L4_SERVICES)?).map_err(map_err(L4_SERVICES))?;
        let backends = HashMap::try_from(take(L4_BACKENDS)?).map_err(map_err(L4_BACKENDS))?;
        let maglev_map = take(L4_MAGLEV)?;
        let maglev_fd = match &maglev_map {
            aya::maps::Map::Array(data) => data.fd().as_fd().try_clone_to_owned(),
            _ => return Err(DatapathError::MissingMap(L4_MAGLEV)),
        }
        .map_err(|e| DatapathError::Map {
            name: L4_MAGLEV,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })?;
        let maglev: Array<MapData, u32> =
            Array::try_from(maglev_map).map_err(map_err(L4_MAGLEV))?;
        let maglev_mapped = match batch::MappedArray::new(maglev_fd.as_fd(), maglev.len() as usize)
        {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!(error = %e, "the Maglev array is not mapped: batch writes");
                None
            }
        };
        let ranges =
            LpmTrie::try_from(take(L4_SOURCE_RANGES)?).map_err(map_err(L4_SOURCE_RANGES))?;
        let ports = Array::try_from(take(L4_PORTS)?).map_err(map_err(L4_PORTS))?;
        let max_services = maglev.len() / table_size;
        Ok(L4Maps {
            services,
            backends,
            maglev,
            maglev_fd,
            maglev_mapped,
            ranges,
            ports,
            ids: Ids::new(max_services, max_backends),
            image: MapImage::default(),
            table_size,
            staged,
        })
    }

    /// Reads every Maglev table the maps should hold back from the kernel
    /// (one lookup per slot, through the system call, not the mapping the
    /// writes went through) and returns the first slot that differs, as
    /// (service id, slot, expected, found); `None` when all agree.
    pub fn maglev_mismatch(&self) -> Result<Option<(u32, u32, u32, u32)>, DatapathError> {
        for (sid, table) in &self.image.maglev {
            for (slot, want) in table.iter().enumerate() {
                let got = self
                    .maglev
                    .get(&(sid * self.table_size + slot as u32), 0)
                    .map_err(map_err(L4_MAGLEV))?;
                if got != *want {
                    return Ok(Some((*sid, slot as u32, *want, got)));
                }
            }
        }
        Ok(None)
    }

    /// The Maglev table size the maps were made for.
    pub fn table_size(&self) -> u32 {
        self.table_size
    }

    /// Brings the maps to `table`. What does not fit is returned (and left
    /// out whole); the rest is applied.
    pub fn apply(&mut self, table: &L4Table) -> Result<Vec<CapacityError>, DatapathError> {
        let (next, errors) = self.ids.image(table, self.table_size);
        for op in plan(&self.image, &next) {
            self.execute(op)?;
        }
        self.image = next;
        if let Some(layout) = self.staged.take() {
            for name in CONFIG_MAPS {
                pin::publish(&layout.staged_map(name), &layout.map(name))?;
            }
            tracing::info!(dir = %layout.maps_dir().display(), "config maps filled and pinned");
        }
        Ok(errors)
    }

    /// Writes one Service's Maglev table through the shared mapping, else in
    /// one batch call, else slot by slot.
    fn write_maglev(&mut self, sid: u32, table: &[u32]) -> Result<(), DatapathError> {
        let base = sid * self.table_size;
        if let Some(mapped) = &mut self.maglev_mapped
            && mapped.write(base, table)
        {
            return Ok(());
        }
        let fd = self.maglev_fd.as_fd();
        match batch::update_u32_array(fd, base, table) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(error = %e, "no batch updates: writing Maglev slots one by one");
            }
            Err(e) => {
                return Err(DatapathError::Map {
                    name: L4_MAGLEV,
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error: e,
                    }),
                });
            }
        }
        for (i, b) in table.iter().enumerate() {
            self.maglev
                .set(base + i as u32, *b, 0)
                .map_err(map_err(L4_MAGLEV))?;
        }
        Ok(())
    }

    fn execute(&mut self, op: MapOp) -> Result<(), DatapathError> {
        match op {
            MapOp::PutBackend(id, b) => {
                self.backends.insert(id, b, 0).map_err(map_err(L4_BACKENDS))
            }
            MapOp::PutMaglev(sid, table) => self.write_maglev(sid, &table),
            MapOp::PutService(k, v) => self.services.insert(k, v, 0).map_err(map_err(L4_SERVICES)),
            MapOp::DeleteService(k) => self.services.remove(&k).map_err(map_err(L4_SERVICES)),
            MapOp::ClearMaglev(sid) => {
                self.write_maglev(sid, &vec![NO_BACKEND; self.table_size as usize])
            }
            MapOp::DeleteBackend(id) => self.backends.remove(&id).map_err(map_err(L4_BACKENDS)),
            MapOp::PutPort(port, flags) => self
                .ports
                .set(port as u32, flags, 0)
                .map_err(map_err(L4_PORTS)),
            MapOp::PutRange(len, k) => self
                .ranges
                .insert(&Key::new(len, k), 1, 0)
                .map_err(map_err(L4_SOURCE_RANGES)),
            MapOp::DeleteRange(len, k) => self
                .ranges
                .remove(&Key::new(len, k))
                .map_err(map_err(L4_SOURCE_RANGES)),
        }
    }
}
