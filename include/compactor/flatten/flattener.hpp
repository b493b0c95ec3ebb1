// Flattens an image's layers into one archive in a single streaming pass.
//
// Layers are read from the top one down. The first entry met for a path is the one the image
// shows (OCI image-spec, layer.md, "Changeset over existing files"), so it is written at once
// unless a whiteout, an opaque directory or a non-directory of an upper layer hides it. Only
// per-path facts are kept, never file content; one exception is described in detail/spool.hpp.
//
// The kernel's initramfs unpacker creates a file only if its directory exists already
// (init/initramfs.c, do_name()), so a directory that an upper layer's entry needs before its
// own entry is met gets a placeholder (0755, root, mtime 0); when the real entry arrives from a
// lower layer it is written again, and the unpacker applies its owner and mode to the existing
// directory. Its mtime stays the placeholder's: dir_utime() applies the earliest entry last.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/archive/entry.hpp>
#include <compactor/flatten/detail/spool.hpp>
#include <compactor/flatten/layer_reader.hpp>
#include <compactor/flatten/path.hpp>
#include <compactor/image/layer.hpp>
#include <compactor/support/error.hpp>

namespace compactor::flatten {

// What the flattener writes to: archive::writer<Format> is one.
template <typename Sink>
concept entry_sink = requires(Sink& sink, const archive::entry& member, archive::link_set link,
                              std::span<const std::byte> data) {
  sink.begin(member, link);
  sink.write(data);
  sink.add(member, link);
};

// 16 GiB of layer data: an initramfs is unpacked into guest RAM (a tmpfs there takes at most
// half of it), so more could only boot in a guest of over 32 GiB. It bounds what a
// decompression bomb costs: about 16 s of decompression here, and at most as much temporary
// disk for the hard-link spool.
inline constexpr std::uint64_t default_max_uncompressed_bytes = std::uint64_t{16} << 30;

// About 320 bytes of memory per entry are kept while the layers are read (the path's state,
// and the layer's candidates for hard links), so the default bounds that to about 320 MiB;
// large distribution images hold a few hundred thousand entries.
inline constexpr std::uint64_t default_max_entries = 1'000'000;

struct options {
  // Where the content of a layer's regular files is kept, unnamed, while that layer is read,
  // for hard links to files already written (see detail/spool.hpp).
  std::filesystem::path spool_directory = std::filesystem::temp_directory_path();
  // The layers' tar streams after decompression, all layers together: headers and content,
  // hidden files included. A layer whose entry would go beyond it is refused.
  std::uint64_t max_uncompressed_bytes = default_max_uncompressed_bytes;
  // Tar entries of all layers together, whiteouts and hidden entries included.
  std::uint64_t max_entries = default_max_entries;
};

// "16 GiB", "256 MiB", "1000 bytes": a limit as a person reads it.
inline std::string describe_size(std::uint64_t bytes) {
  constexpr std::uint64_t mib = std::uint64_t{1} << 20;
  constexpr std::uint64_t gib = std::uint64_t{1} << 30;
  if (bytes >= gib && bytes % gib == 0) {
    return fmt::format("{} GiB", bytes / gib);
  }
  if (bytes >= mib && bytes % mib == 0) {
    return fmt::format("{} MiB", bytes / mib);
  }
  return fmt::format("{} bytes", bytes);
}

struct statistics {
  std::uint64_t layers = 0;
  std::uint64_t entries_read = 0;    // tar entries of all layers, whiteouts included
  std::uint64_t entries_written = 0; // archive members, placeholders and rewrites included
  std::uint64_t hidden = 0;          // entries that a whiteout or an upper layer hides
  std::uint64_t whiteouts = 0;       // whiteout and opaque markers
  std::uint64_t placeholders = 0;    // directories written before their own entry was met
  std::uint64_t hard_link_sets = 0;  // sets of names written as one inode
  std::uint64_t content_bytes = 0;   // file content read from the layers
  std::uint64_t spooled_bytes = 0;   // of which kept in the spool
  // Files written once alone and again with the hard links their layer gave them later: the
  // unpacker rewrites the same inode, so these members and their content, in 4 KiB pages, take
  // no memory of their own once unpacked.
  std::uint64_t relinked_files = 0;
  std::uint64_t relinked_page_bytes = 0;
};

namespace detail {

inline constexpr std::string_view whiteout_prefix = ".wh.";
inline constexpr std::string_view opaque_marker = ".wh..wh..opq";

template <typename Sink>
class flattener {
public:
  flattener(Sink& sink, const options& opts)
      : sink_(sink), spool_(opts.spool_directory), max_bytes_(opts.max_uncompressed_bytes),
        max_entries_(opts.max_entries) {}

  statistics run(std::span<const image::layer> layers) {
    for (auto index = static_cast<int>(layers.size()) - 1; index >= 0; --index) {
      read_layer(layers[static_cast<std::size_t>(index)], index);
      ++stats_.layers;
    }
    if (!pending_.empty()) {
      const auto& [target, links] = *pending_.begin();
      throw error(fmt::format("layer {}: hard link \"{}\" points to \"{}\", which no layer below "
                              "it holds",
                              links.front().digest, links.front().name, target));
    }
    return stats_;
  }

private:
  // Per path, what the layers read so far (all above or equal to the current one) say.
  struct node {
    int written = -1;  // layer of the entry written for this path; -1: none
    int whiteout = -1; // topmost layer that whites this path out
    int opaque = -1;   // topmost layer that makes this directory opaque
    bool directory = false;
    bool placeholder = false; // written as a placeholder; the real entry is still to come
  };

  // A non-directory entry of the layer being read, kept until the layer ends for hard links.
  struct layer_item {
    archive::entry member;
    std::uint64_t spool_offset = 0;
    bool visible = false;
    std::string root; // the entry whose inode this one shares; itself when not a link
  };

  // A hard link whose target lies in a lower layer.
  struct pending_link {
    std::string path;
    std::string name; // as the layer spells it, for messages
    std::string digest;
    bool visible = false;
  };

  void read_layer(const image::layer& layer, int index) {
    layer_reader reader(layer);
    layer_digest_ = reader.digest();
    while (auto* item = reader.next()) {
      ++stats_.entries_read;
      check_limits(reader, item, index);
      read_entry(reader, item, index);
    }
    finish_layer(reader.digest());
    reader.drain();
    bytes_before_ += reader.uncompressed_bytes();
  }

  // --- Limits (a hostile layer: a decompression bomb, a flood of entries) --------------------

  // Layers are numbered from 1 at the bottom, as the image's manifest lists them.
  void check_limits(const layer_reader& reader, ::archive_entry* item, int index) const {
    if (stats_.entries_read > max_entries_) {
      throw error(fmt::format("layer {} ({}): the image's layers hold more than {} entries, the "
                              "limit; entry \"{}\" is beyond it",
                              index + 1, reader.digest(), max_entries_, raw_name(item)));
    }
    const auto declared = archive_entry_size_is_set(item) != 0 && archive_entry_size(item) > 0
                              ? static_cast<std::uint64_t>(archive_entry_size(item))
                              : 0;
    const auto consumed = bytes_before_ + reader.uncompressed_bytes();
    if (consumed > max_bytes_ || declared > max_bytes_ - consumed) {
      throw_expands(reader, index, raw_name(item));
    }
  }

  // Content as it streams, in case a reader's declared size and the bytes that follow differ.
  void check_content(const layer_reader& reader, int index, const std::string& path) const {
    if (bytes_before_ + reader.uncompressed_bytes() > max_bytes_) {
      throw_expands(reader, index, path);
    }
  }

  [[noreturn]] void throw_expands(const layer_reader& reader, int index,
                                  std::string_view entry) const {
    throw error(fmt::format("layer {} ({}) expands beyond the limit of {} of uncompressed data "
                            "for all layers, at entry \"{}\"",
                            index + 1, reader.digest(), describe_size(max_bytes_), entry));
  }

  static std::string raw_name(::archive_entry* item) {
    if (const char* name = archive_entry_pathname(item)) {
      return name;
    }
    const char* name = archive_entry_pathname_utf8(item);
    return name != nullptr ? name : "";
  }

  static std::string canonical_or_throw(std::string_view raw, std::string_view digest) {
    auto path = canonical_path(raw);
    if (!path) {
      throw error(fmt::format("layer {}: entry \"{}\" climbs above the image root", digest, raw));
    }
    return std::move(*path);
  }

  void read_entry(layer_reader& reader, ::archive_entry* item, int index) {
    const auto raw = raw_name(item);
    auto path = canonical_or_throw(raw, reader.digest());
    if (path.empty()) {
      return; // the root: the guest's root directory is the kernel's own rootfs
    }

    const auto base = base_name(path);
    if (base.starts_with(whiteout_prefix)) {
      ++stats_.whiteouts;
      whiteout(path, base, index);
      return;
    }

    const char* link_target = archive_entry_hardlink(item);
    if (link_target != nullptr && archive_entry_size(item) == 0) {
      hard_link(reader, raw, std::move(path), link_target, index);
      return;
    }

    auto member = metadata(item, std::move(path));
    if (!member) {
      ++stats_.hidden; // a type no archive can hold (a tar "contiguous file" is regular)
      return;
    }
    if (member->type == archive::file_type::regular) {
      regular_file(reader, std::move(*member), index);
    } else {
      other_entry(std::move(*member), index);
    }
  }

  static std::optional<archive::entry> metadata(::archive_entry* item, std::string path) {
    archive::entry member;
    member.path = std::move(path);
    switch (archive_entry_filetype(item)) {
    case AE_IFREG: member.type = archive::file_type::regular; break;
    case AE_IFDIR: member.type = archive::file_type::directory; break;
    case AE_IFLNK: member.type = archive::file_type::symlink; break;
    case AE_IFIFO: member.type = archive::file_type::fifo; break;
    case AE_IFCHR: member.type = archive::file_type::character_device; break;
    case AE_IFBLK: member.type = archive::file_type::block_device; break;
    case AE_IFSOCK: member.type = archive::file_type::socket; break;
    default: return std::nullopt;
    }
    member.attrs.permissions = static_cast<std::uint32_t>(archive_entry_perm(item) & 07777);
    member.attrs.uid = static_cast<std::uint32_t>(archive_entry_uid(item));
    member.attrs.gid = static_cast<std::uint32_t>(archive_entry_gid(item));
    member.attrs.mtime = archive_entry_mtime(item);
    if (member.type == archive::file_type::regular) {
      member.size = static_cast<std::uint64_t>(archive_entry_size(item));
    }
    if (member.type == archive::file_type::symlink) {
      const char* target = archive_entry_symlink(item);
      if (target == nullptr) {
        target = archive_entry_symlink_utf8(item);
      }
      member.symlink_target = target != nullptr ? target : "";
    }
    member.rdev_major = archive_entry_rdevmajor(item);
    member.rdev_minor = archive_entry_rdevminor(item);
    return member;
  }

  // --- Whiteouts (OCI image-spec, layer.md, "Whiteouts" and "Opaque Whiteout") --------------

  // They apply to lower layers only, wherever they sit in this layer's tar.
  void whiteout(const std::string& path, std::string_view base, int index) {
    if (base == opaque_marker) {
      const auto directory = std::string(parent_path(path));
      if (auto& state = nodes_[directory]; state.opaque < 0) {
        state.opaque = index;
      }
      layer_opaques_.insert(directory);
      return;
    }
    const auto name = base.substr(whiteout_prefix.size());
    if (name.empty() || name == "." || name == "..") {
      return;
    }
    const auto parent = parent_path(path);
    auto target = parent.empty() ? std::string(name) : fmt::format("{}/{}", parent, name);
    if (auto& state = nodes_[target]; state.whiteout < 0) {
      state.whiteout = index;
    }
    layer_whiteouts_.insert(std::move(target));
  }

  // Whether the entry for `path` in layer `index` is the one the image shows.
  bool visible(const std::string& path, int index, bool directory) {
    bool hidden = false;
    const auto hides_below = [&](std::string_view ancestor) {
      const auto found = nodes_.find(std::string(ancestor));
      if (found == nodes_.end()) {
        return;
      }
      const auto& state = found->second;
      hidden = hidden || state.whiteout > index || state.opaque > index ||
               (state.written > index && !state.directory);
    };
    hides_below("");
    for_each_ancestor(path, hides_below);
    if (hidden) {
      return false;
    }

    const auto found = nodes_.find(path);
    if (found == nodes_.end()) {
      return true;
    }
    const auto& state = found->second;
    if (state.whiteout > index || state.written > index) {
      return false;
    }
    // A directory that an upper layer's entries needed stays one.
    return !(state.placeholder && !directory);
  }

  // A layer that holds a directory and later another type under the same name: extracting it
  // would remove the directory and what the layer put in it, which a one-pass writer cannot
  // take back from its archive (and the kernel's unpacker would keep the directory instead).
  void refuse_directory_replacement(const std::string& path, int index) const {
    const auto found = nodes_.find(path);
    if (found != nodes_.end() && found->second.written == index && found->second.directory) {
      throw error(fmt::format("layer {} ({}): entry \"{}\" replaces a directory that the same "
                              "layer holds",
                              index + 1, layer_digest_, path));
    }
  }

  void mark_written(const std::string& path, int index, bool directory) {
    auto& state = nodes_[path];
    state.written = index;
    state.directory = directory;
    state.placeholder = false;
  }

  void ensure_parents(std::string_view path) {
    for_each_ancestor(path, [&](std::string_view ancestor) {
      auto& state = nodes_[std::string(ancestor)];
      if (state.placeholder || (state.written >= 0 && state.directory)) {
        return;
      }
      state.placeholder = true;
      state.directory = true;
      state.written = -1;
      emit_add(archive::directory_entry(std::string(ancestor), archive::with_permissions(0755)));
      ++stats_.placeholders;
    });
  }

  // --- Entries -------------------------------------------------------------------------------

  void other_entry(archive::entry member, int index) {
    const bool directory = member.type == archive::file_type::directory;
    if (!directory) {
      refuse_directory_replacement(member.path, index);
    }
    const bool shown = visible(member.path, index, directory);
    if (shown) {
      ensure_parents(member.path);
      emit_add(member);
      mark_written(member.path, index, directory);
    } else {
      ++stats_.hidden;
    }
    if (directory) {
      return;
    }

    // Links to a device, fifo or symlink are written as copies of it.
    for (const auto& link : take_pending(member.path)) {
      auto copy = member;
      copy.path = link.path;
      ensure_parents(copy.path);
      emit_add(copy);
    }
    auto path = member.path;
    layer_items_.insert_or_assign(
        path, layer_item{.member = std::move(member), .visible = shown, .root = path});
  }

  void regular_file(layer_reader& reader, archive::entry member, int index) {
    refuse_directory_replacement(member.path, index);
    const bool shown = visible(member.path, index, false);
    const auto links = take_pending(member.path);

    std::vector<std::string> names;
    if (shown) {
      names.push_back(member.path);
      mark_written(member.path, index, false);
    } else {
      ++stats_.hidden;
    }
    for (const auto& link : links) {
      names.push_back(link.path);
    }

    const auto offset = spool_.begin();
    const auto link = link_for(names.size());
    if (!names.empty()) {
      auto head = member;
      head.path = names.front();
      ensure_parents(head.path);
      emit_begin(head, link);
    }
    reader.read_data([&](std::span<const std::byte> data) {
      check_content(reader, index, member.path);
      if (!names.empty()) {
        sink_.write(data);
      }
      spool_.append(data);
      stats_.content_bytes += data.size();
      stats_.spooled_bytes += data.size();
    });
    emit_members(member, names, link);

    auto path = member.path;
    layer_items_.insert_or_assign(path, layer_item{.member = std::move(member),
                                                   .spool_offset = offset,
                                                   .visible = shown,
                                                   .root = path});
  }

  // --- Hard links ----------------------------------------------------------------------------

  void hard_link(layer_reader& reader, std::string_view raw, std::string path,
                 std::string_view raw_target, int index) {
    auto target = canonical_or_throw(raw_target, reader.digest());
    refuse_directory_replacement(path, index);
    const bool shown = visible(path, index, false);
    if (shown) {
      mark_written(path, index, false); // written when the layer ends or the target is met
    } else {
      ++stats_.hidden;
    }

    if (const auto found = layer_items_.find(target); found != layer_items_.end()) {
      auto root = found->second.root;
      auto item = layers_item_copy(layer_items_.at(root), path, shown);
      if (shown) {
        auto [slot, created] = groups_.try_emplace(root);
        if (created) {
          group_order_.push_back(root);
        }
        slot->second.push_back(path);
      }
      layer_items_.insert_or_assign(path, std::move(item));
      return;
    }

    // A link to a link of this layer whose own target is below.
    if (const auto alias = layer_aliases_.find(target); alias != layer_aliases_.end()) {
      target = alias->second;
    }
    layer_aliases_.insert_or_assign(path, target);
    pending_[target].push_back(pending_link{.path = path,
                                            .name = std::string(raw),
                                            .digest = reader.digest(),
                                            .visible = shown});
  }

  static layer_item layers_item_copy(const layer_item& root, const std::string& path, bool shown) {
    auto item = root;
    item.member.path = path;
    item.visible = shown;
    return item;
  }

  // The visible links waiting for `target` from upper layers; they are resolved now.
  std::vector<pending_link> take_pending(const std::string& target) {
    std::vector<pending_link> links;
    if (pending_.empty()) {
      return links;
    }
    const auto found = pending_.find(target);
    if (found == pending_.end()) {
      return links;
    }
    for (auto& link : found->second) {
      if (link.visible) {
        links.push_back(std::move(link));
      }
    }
    pending_.erase(found);
    return links;
  }

  archive::link_set link_for(std::size_t names) {
    if (names < 2) {
      return {};
    }
    ++stats_.hard_link_sets;
    return {.id = ++link_ids_, .count = static_cast<std::uint32_t>(names)};
  }

  void emit_members(const archive::entry& member, const std::vector<std::string>& names,
                    archive::link_set link) {
    for (std::size_t i = 1; i < names.size(); ++i) {
      auto other = member;
      other.path = names[i];
      other.size = 0;
      ensure_parents(other.path);
      emit_add(other, link);
    }
  }

  // Writes the hard links whose targets this layer holds. A target written earlier as a lone
  // file is written again, now with its links, because the kernel links a name only to an
  // earlier entry that announced a link count of 2 or more (init/initramfs.c, maybe_link()).
  void write_layer_links() {
    for (const auto& root : group_order_) {
      const auto& item = layer_items_.at(root);
      const auto& members = groups_.at(root);
      std::vector<std::string> names;
      if (item.visible) {
        names.push_back(root);
      }
      names.insert(names.end(), members.begin(), members.end());

      if (item.member.type != archive::file_type::regular) {
        for (const auto& name : members) {
          auto copy = item.member;
          copy.path = name;
          ensure_parents(name);
          emit_add(copy);
        }
        continue;
      }

      if (item.visible) {
        constexpr std::uint64_t page = 4096;
        ++stats_.relinked_files;
        stats_.relinked_page_bytes += (item.member.size + page - 1) / page * page;
      }
      const auto link = link_for(names.size());
      auto head = item.member;
      head.path = names.front();
      ensure_parents(head.path);
      emit_begin(head, link);
      spool_.replay(item.spool_offset, item.member.size,
                    [&](std::span<const std::byte> data) { sink_.write(data); });
      emit_members(item.member, names, link);
    }
  }

  // A link that waits for a lower layer breaks when this layer removes its target: the
  // whiteouts of a layer apply before its entries.
  bool removed_by_this_layer(const std::string& path) const {
    bool removed = layer_whiteouts_.contains(path) || layer_opaques_.contains("");
    for_each_ancestor(path, [&](std::string_view ancestor) {
      const auto name = std::string(ancestor);
      removed = removed || layer_whiteouts_.contains(name) || layer_opaques_.contains(name) ||
                layer_items_.contains(name);
    });
    return removed;
  }

  void finish_layer(const std::string& digest) {
    write_layer_links();
    for (const auto& [target, links] : pending_) {
      if (removed_by_this_layer(target)) {
        throw error(fmt::format("layer {}: hard link \"{}\" points to \"{}\", which layer {} "
                                "removes",
                                links.front().digest, links.front().name, target, digest));
      }
    }
    layer_items_.clear();
    layer_aliases_.clear();
    groups_.clear();
    group_order_.clear();
    layer_whiteouts_.clear();
    layer_opaques_.clear();
    spool_.clear();
  }

  void emit_add(const archive::entry& member, archive::link_set link = {}) {
    sink_.add(member, link);
    ++stats_.entries_written;
  }

  void emit_begin(const archive::entry& member, archive::link_set link) {
    sink_.begin(member, link);
    ++stats_.entries_written;
  }

  Sink& sink_;
  spool spool_;
  std::uint64_t max_bytes_;
  std::uint64_t max_entries_;
  std::uint64_t bytes_before_ = 0; // uncompressed bytes of the layers already read
  std::string layer_digest_;       // of the layer being read
  statistics stats_;
  std::uint64_t link_ids_ = 0;
  std::unordered_map<std::string, node> nodes_;
  std::unordered_map<std::string, std::vector<pending_link>> pending_;

  // State of the layer being read.
  std::unordered_map<std::string, layer_item> layer_items_;
  std::unordered_map<std::string, std::string> layer_aliases_;
  std::unordered_map<std::string, std::vector<std::string>> groups_;
  std::vector<std::string> group_order_;
  std::unordered_set<std::string> layer_whiteouts_;
  std::unordered_set<std::string> layer_opaques_;
};

} // namespace detail

// Writes the image that `layers` (bottom layer first) make to `sink` and returns what it did.
// Every byte of every layer is read once. The sink is not finished: the caller may add its own
// entries (an init, its configuration) and then finish it.
template <typename Sink>
statistics flatten(std::span<const image::layer> layers, Sink& sink, const options& opts = {}) {
  static_assert(entry_sink<Sink>,
                "flatten() writes to a sink with begin(entry, link_set), write(bytes) and "
                "add(entry, link_set), such as compactor::archive::writer<cpio_newc>.");
  return detail::flattener<Sink>(sink, opts).run(layers);
}

} // namespace compactor::flatten
