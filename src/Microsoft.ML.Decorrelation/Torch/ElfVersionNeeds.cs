using System.Buffers.Binary;
using System.Text;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Reads and edits the GNU version needs (<c>.gnu.version_r</c>) of a 64-bit little-endian ELF shared library:
/// enough to mark one needed symbol version weak (VER_FLG_WEAK), which glibc's loader then accepts when the
/// version is missing and treats exactly as before when it is present.
/// </summary>
internal static class ElfVersionNeeds
{
    private const uint ShtDynsym = 11, ShtGnuVerneed = 0x6ffffffe, ShtGnuVersym = 0x6fffffff;
    private const ushort VerFlgWeak = 0x2;

    /// <summary>Whether the library needs <paramref name="version"/> without the weak flag.</summary>
    /// <exception cref="InvalidDataException">The bytes are not a 64-bit little-endian ELF file with GNU symbol versioning.</exception>
    public static bool HasStrongNeed(byte[] elf, string version)
        => Needs(elf).Any(need => need.Name == version && (need.Flags & VerFlgWeak) == 0);

    /// <summary>
    /// Marks the need on <paramref name="version"/> weak in place, unless a dynamic symbol other than
    /// <paramref name="allowedSymbols"/> is bound to it.
    /// </summary>
    /// <returns>The symbols bound to the version that are not allowed; when there are any, nothing was changed.</returns>
    public static IReadOnlyList<string> MarkWeak(byte[] elf, string version, IReadOnlyCollection<string> allowedSymbols)
    {
        var targets = Needs(elf).Where(need => need.Name == version).ToList();
        var unresolved = targets.SelectMany(need => SymbolsBoundTo(elf, need.Index)).Where(symbol => !allowedSymbols.Contains(symbol)).Distinct().ToList();
        if (unresolved.Count > 0)
            return unresolved;
        foreach (var need in targets)
            BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(need.FlagsOffset), (ushort)(need.Flags | VerFlgWeak));
        return [];
    }

    private readonly record struct Need(string Name, ushort Flags, int FlagsOffset, ushort Index);

    private readonly record struct Section(uint Type, int Offset, int Size, int Link, int Info);

    private static Section[] Sections(byte[] elf)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != 'E' || elf[2] != 'L' || elf[3] != 'F' || elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException("Not a 64-bit little-endian ELF file.");
        var span = elf.AsSpan();
        int offset = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(span[0x28..]));
        int size = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3A..]), count = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3C..]);
        var sections = new Section[count];
        for (int i = 0; i < count; i++)
        {
            var header = span.Slice(offset + i * size, size);
            sections[i] = new Section(BinaryPrimitives.ReadUInt32LittleEndian(header[4..]), checked((int)BinaryPrimitives.ReadUInt64LittleEndian(header[0x18..])),
                checked((int)BinaryPrimitives.ReadUInt64LittleEndian(header[0x20..])), (int)BinaryPrimitives.ReadUInt32LittleEndian(header[0x28..]),
                (int)BinaryPrimitives.ReadUInt32LittleEndian(header[0x2C..]));
        }
        return sections;
    }

    private static Section Find(Section[] sections, uint type)
        => sections.FirstOrDefault(s => s.Type == type) is { Type: not 0 } section ? section
            : throw new InvalidDataException("The ELF file has no GNU symbol versioning sections.");

    private static string CString(byte[] elf, Section table, int offset)
    {
        int start = table.Offset + offset, end = Array.IndexOf(elf, (byte)0, start);
        return Encoding.ASCII.GetString(elf, start, end - start);
    }

    private static List<Need> Needs(byte[] elf)
    {
        var sections = Sections(elf);
        var verneed = Find(sections, ShtGnuVerneed);
        var strings = sections[verneed.Link];
        var needs = new List<Need>();
        int entry = verneed.Offset;
        for (int n = 0; n < verneed.Info; n++)
        {
            int aux = entry + (int)BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(entry + 8));
            for (int a = 0; a < BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan(entry + 2)); a++)
            {
                needs.Add(new Need(CString(elf, strings, (int)BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(aux + 8))),
                    BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan(aux + 4)), aux + 4, BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan(aux + 6))));
                aux += (int)BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(aux + 12));
            }
            entry += (int)BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(entry + 12));
        }
        return needs;
    }

    private static IEnumerable<string> SymbolsBoundTo(byte[] elf, ushort versionIndex)
    {
        var sections = Sections(elf);
        var dynsym = Find(sections, ShtDynsym);
        var versym = Find(sections, ShtGnuVersym);
        var names = sections[dynsym.Link];
        for (int s = 0; s < dynsym.Size / 24; s++)
        {
            if ((BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan(versym.Offset + 2 * s)) & 0x7fff) == versionIndex)
                yield return CString(elf, names, (int)BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan(dynsym.Offset + 24 * s)));
        }
    }
}
