//! The part of a module's DWARF that fault reports read, rewritten from
//! the whole: the compile units' line tables, and the subprograms,
//! inlined calls and lexical blocks that have code, with only their address
//! ranges and call sites (file, line, column). Function names come from the
//! module's `name` section; types, variables, names and location lists are
//! dropped. The units are written as DWARF 5, whose range lists and file
//! tables are smaller than the DWARF 4 rustc emits for wasm.

use anyhow::Context;
use gimli::write::{
    self, Address, ConvertLineProgram, ConvertLineSequenceEnd, ConvertUnit, EndianVec,
    FilterUnitSection,
};
use gimli::{AttributeValue, EndianSlice, LittleEndian, constants};
use std::collections::HashMap;

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// The DWARF version written.
const DWARF_VERSION: u16 = 5;

/// The rewritten `.debug_*` sections of a module whose DWARF is `sections`
/// (name, contents); the same sections when there is no `.debug_info` to
/// rewrite (line tables alone are kept as they are), none when there are
/// none.
pub(super) fn fault_report_dwarf(
    sections: &[(&str, &[u8])],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    if !sections.iter().any(|(name, _)| *name == ".debug_info") {
        return Ok(sections
            .iter()
            .map(|(name, data)| ((*name).to_owned(), data.to_vec()))
            .collect());
    }
    let read = gimli::Dwarf::load(|id: gimli::SectionId| {
        let data = sections
            .iter()
            .find(|(name, _)| *name == id.name())
            .map_or(&[][..], |(_, data)| *data);
        Ok::<_, gimli::Error>(Reader::new(data, LittleEndian))
    })?;
    let mut dwarf = write::Dwarf::new();
    let mut convert = dwarf.convert_with_filter(entries_with_code(&read)?)?;
    while let Some((mut unit, root)) = convert.read_unit()? {
        convert_unit(&mut unit, root)?;
    }
    let mut out = write::Sections::new(EndianVec::new(LittleEndian));
    dwarf.write(&mut out).context("writing DWARF")?;
    let mut written = Vec::new();
    out.for_each(|id, data| {
        if !data.slice().is_empty() {
            written.push((id.name().to_owned(), data.slice().to_vec()));
        }
        Ok::<_, gimli::Error>(())
    })?;
    Ok(written)
}

/// One compile unit as DWARF 5: its live line sequences, its file and
/// ranges, and its frames. The filter also keeps what a kept DIE refers to
/// and its parents (namespaces, the abstract functions inlined calls point
/// at); only frames are written, each under its nearest written ancestor.
fn convert_unit<'u, 'a>(
    unit: &mut ConvertUnit<'u, Reader<'a>>,
    root: write::ConvertUnitEntry<'u, Reader<'a>>,
) -> anyhow::Result<()> {
    let mut encoding = unit.unit.encoding();
    encoding.version = DWARF_VERSION;
    unit.unit.set_encoding(encoding);
    if let Some(program) = unit.read_line_program(Some(encoding), None)? {
        let (program, files) = live_sequences(program)?;
        unit.set_line_program(program, files);
    }
    let root_id = unit.unit.root();
    copy_attributes(unit, root_id, &root, is_unit_attribute)?;
    let mut written_parent = HashMap::new();
    let mut entry = root;
    while let Some(reserved) = unit.read_entry(&mut entry)? {
        let Some(id) = reserved else { continue };
        let parent = entry.parent.map_or(root_id, |parent| {
            *written_parent.get(&parent).unwrap_or(&parent)
        });
        if is_frame_with_code(&entry) {
            unit.unit.add_reserved(id, parent, entry.tag);
            copy_attributes(unit, id, &entry, is_frame_attribute)?;
        } else {
            written_parent.insert(id, parent);
        }
    }
    Ok(())
}

/// wasm-ld marks the DWARF of code it dropped with these addresses.
fn is_live(address: u64) -> bool {
    address < 0xffff_fffe
}

/// The DIEs to keep: frames with code (and, through the filter, what they
/// refer to and their parents).
fn entries_with_code<'a>(
    read: &'a gimli::Dwarf<Reader<'a>>,
) -> anyhow::Result<FilterUnitSection<'a, Reader<'a>>> {
    let mut filter = FilterUnitSection::new(read)?;
    while let Some(mut unit) = filter.read_unit()? {
        let mut entry = unit.null_entry();
        while unit.read_entry(&mut entry)? {
            if is_frame_with_code(&entry) {
                unit.require_entry(entry.offset);
            }
        }
    }
    Ok(filter)
}

/// A function, inlined call or block that covers code the linker kept.
fn is_frame_with_code(entry: &gimli::DebuggingInformationEntry<Reader<'_>>) -> bool {
    let frame = matches!(
        entry.tag,
        constants::DW_TAG_subprogram
            | constants::DW_TAG_inlined_subroutine
            | constants::DW_TAG_lexical_block
    );
    frame
        && entry.attrs.iter().any(|attr| match attr.value() {
            AttributeValue::Addr(pc) => attr.name() == constants::DW_AT_low_pc && is_live(pc),
            _ => attr.name() == constants::DW_AT_ranges,
        })
}

/// The unit's line program without the sequences of code the linker dropped.
fn live_sequences(
    mut program: ConvertLineProgram<'_, Reader<'_>>,
) -> anyhow::Result<(write::LineProgram, Vec<write::FileId>)> {
    let mut live = true;
    while let Some(sequence) = program.read_sequence()? {
        if let Some(start) = sequence.start {
            live = is_live(start);
            if live {
                program.set_address(Address::Constant(start));
            }
        }
        if !live {
            continue;
        }
        for row in sequence.rows {
            program.generate_row(row);
        }
        if let ConvertLineSequenceEnd::Length(length) = sequence.end {
            program.end_sequence(length);
        }
    }
    Ok(program.program())
}

/// What a compile unit keeps: its file and directory (line tables name
/// files relative to them) and its address ranges.
fn is_unit_attribute(name: constants::DwAt) -> bool {
    matches!(
        name,
        constants::DW_AT_name
            | constants::DW_AT_comp_dir
            | constants::DW_AT_low_pc
            | constants::DW_AT_high_pc
            | constants::DW_AT_ranges
    )
}

/// What a frame (function, inlined call, block) keeps: its address ranges
/// and where it was called from.
fn is_frame_attribute(name: constants::DwAt) -> bool {
    matches!(
        name,
        constants::DW_AT_low_pc
            | constants::DW_AT_high_pc
            | constants::DW_AT_ranges
            | constants::DW_AT_call_file
            | constants::DW_AT_call_line
            | constants::DW_AT_call_column
    )
}

/// Copy the attributes of `entry` that `keep` selects onto the written
/// entry `id`.
fn copy_attributes<'a>(
    unit: &mut ConvertUnit<'_, Reader<'a>>,
    id: write::UnitEntryId,
    entry: &write::ConvertUnitEntry<'_, Reader<'a>>,
    keep: fn(constants::DwAt) -> bool,
) -> anyhow::Result<()> {
    for attr in entry.attrs.iter().filter(|attr| keep(attr.name())) {
        let value = unit.convert_attribute_value(entry.read_unit, attr, &|address| {
            Some(Address::Constant(address))
        })?;
        unit.unit.get_mut(id).set(attr.name(), value);
    }
    Ok(())
}
