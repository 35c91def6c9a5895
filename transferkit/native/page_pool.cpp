// transferkit's CPU tensor allocator: a pool of resident pages that new tensors are assembled from.
//
// glibc either maps every large tensor afresh (each training step faults in and zeroes all its activations
// again) or keeps freed memory in its heap (no faults, but the heap fragments and peaks about a third above
// what is alive). This allocator keeps freed blocks of `min_bytes` and more as resident pages. A request is
// served from the smallest free piece that holds it (split, no system call); when no piece is large enough,
// free pieces are moved into a fresh address range with mremap: the kernel moves their page-table entries,
// so nothing is faulted in, zeroed or copied. New pages are faulted only for what the free pool lacks, so
// resident memory stays at the peak of what is alive. Smaller requests go to the allocator installed before.
//
// Linux moves a range that spans several kernel mappings in one mremap since 6.17; older kernels move one
// mapping at a time. Where a probe at install finds the old behaviour, every piece records which of our
// mappings it lies in and pieces are merged only within one. Should a move fail anyway, that piece is
// unmapped and fresh pages serve the rest (counted in the statistics).

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>
#include <pthread.h>

#include <cerrno>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr size_t kPage = 4096;

struct Piece {
  size_t size;
  uint64_t mapping;  // pieces of one mapping may be merged and moved as one range
};

struct Segment {
  uintptr_t addr;
  size_t size;
  uint64_t mapping;
};

class PagePoolAllocator final : public c10::Allocator {
 public:
  PagePoolAllocator(c10::Allocator* fallback, size_t min_bytes, bool moves_span_mappings)
      : fallback_(fallback), min_bytes_(min_bytes), moves_span_mappings_(moves_span_mappings) {}

  c10::DataPtr allocate(size_t n) override {
    void* ptr = n < min_bytes_ ? fallback_->raw_allocate(n) : take((n + kPage - 1) & ~(kPage - 1));
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void release(void* ptr) { instance->give_back(ptr); }

  void stats(uint64_t* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    out[0] = live_;
    out[1] = pooled_;
    out[2] = peak_live_;
    out[3] = faulted_;
    out[4] = moved_;
    out[5] = failed_moves_;
    out[6] = free_.size();
    out[7] = moves_span_mappings_;
  }

  // unmap every free piece: resident memory drops to what is alive
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked();
  }

  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }
  // a forked child (a DataLoader worker) starts without the parent's free pages: using them would copy them
  void unlock_in_child() {
    trim_locked();
    mutex_.unlock();
  }

  static PagePoolAllocator* instance;

 private:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Segment> segments;
    auto best = by_size_.lower_bound({size, 0});
    if (best != by_size_.end()) {
      uintptr_t addr = best->second;
      segments.push_back({addr, size, free_[addr].mapping});
      take_prefix(addr, size);
    } else {
      segments = assemble(size);
    }
    void* ptr = reinterpret_cast<void*>(segments.front().addr);
    live_ += size;
    if (live_ > peak_live_) peak_live_ = live_;
    blocks_.emplace(ptr, std::move(segments));
    return ptr;
  }

  // a fresh range of `size` bytes: free pieces moved in (largest first), fresh pages for the rest
  std::vector<Segment> assemble(size_t size) {
    void* fresh = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED) {
      trim_locked();
      fresh = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK_WITH(OutOfMemoryError, fresh != MAP_FAILED, "CPU out of memory: could not map ", size, " bytes");
    }
    auto base = reinterpret_cast<uintptr_t>(fresh);
    uint64_t fresh_mapping = next_mapping_++;
    std::vector<Segment> segments;
    size_t filled = 0;
    while (filled < size && !by_size_.empty()) {
      auto largest = std::prev(by_size_.end());
      uintptr_t addr = largest->second;
      size_t part = std::min(largest->first, size - filled);
      take_prefix(addr, part);
      void* moved = mremap(reinterpret_cast<void*>(addr), part, part, MREMAP_MAYMOVE | MREMAP_FIXED,
                           reinterpret_cast<void*>(base + filled));
      if (moved == MAP_FAILED) {
        munmap(reinterpret_cast<void*>(addr), part);
        failed_moves_++;
        continue;
      }
      segments.push_back({base + filled, part, next_mapping_++});
      moved_ += part;
      filled += part;
    }
    if (filled < size) {
      segments.push_back({base + filled, size - filled, fresh_mapping});
      faulted_ += size - filled;
    }
    return segments;
  }

  // remove the first `size` bytes of the free piece at `addr` from the pool
  void take_prefix(uintptr_t addr, size_t size) {
    auto it = free_.find(addr);
    Piece piece = it->second;
    by_size_.erase({piece.size, addr});
    free_.erase(it);
    pooled_ -= piece.size;
    if (piece.size > size) insert_free(addr + size, piece.size - size, piece.mapping);
  }

  void give_back(void* ptr) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto found = blocks_.find(ptr);
    if (found == blocks_.end()) {
      lock.unlock();
      fallback_->raw_deallocate(ptr);
      return;
    }
    for (const Segment& segment : found->second) {
      live_ -= segment.size;
      insert_free(segment.addr, segment.size, segment.mapping);
    }
    blocks_.erase(found);
  }

  // add a free piece, merged with its neighbours in the same mapping
  void insert_free(uintptr_t addr, size_t size, uint64_t mapping) {
    pooled_ += size;
    auto next = free_.lower_bound(addr);
    if (next != free_.end() && next->first == addr + size && mergeable(next->second.mapping, mapping)) {
      size += next->second.size;
      by_size_.erase({next->second.size, next->first});
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second.size == addr && mergeable(prev->second.mapping, mapping)) {
        by_size_.erase({prev->second.size, prev->first});
        prev->second.size += size;
        by_size_.insert({prev->second.size, prev->first});
        return;
      }
    }
    free_.emplace(addr, Piece{size, mapping});
    by_size_.insert({size, addr});
  }

  bool mergeable(uint64_t a, uint64_t b) const { return moves_span_mappings_ || a == b; }

  void trim_locked() {
    for (auto& [addr, piece] : free_) munmap(reinterpret_cast<void*>(addr), piece.size);
    free_.clear();
    by_size_.clear();
    pooled_ = 0;
  }

  c10::Allocator* fallback_;
  size_t min_bytes_;
  bool moves_span_mappings_;
  std::mutex mutex_;
  std::map<uintptr_t, Piece> free_;
  std::set<std::pair<size_t, uintptr_t>> by_size_;
  std::unordered_map<void*, std::vector<Segment>> blocks_;
  uint64_t next_mapping_ = 1;
  size_t live_ = 0, pooled_ = 0, peak_live_ = 0;
  uint64_t faulted_ = 0, moved_ = 0, failed_moves_ = 0;
};

PagePoolAllocator* PagePoolAllocator::instance = nullptr;

// whether one mremap moves a range made of two kernel mappings (a page moved into the middle of another range)
bool moves_span_mappings() {
  const int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
  auto* range = static_cast<char*>(mmap(nullptr, 4 * kPage, prot, flags, -1, 0));
  auto* other = static_cast<char*>(mmap(nullptr, kPage, prot, flags, -1, 0));
  auto* target = static_cast<char*>(mmap(nullptr, 4 * kPage, prot, flags, -1, 0));
  if (range == MAP_FAILED || other == MAP_FAILED || target == MAP_FAILED) return false;
  range[0] = other[0] = 1;  // distinct anonymous mappings, so the kernel cannot merge them
  if (mremap(other, kPage, kPage, MREMAP_MAYMOVE | MREMAP_FIXED, range + kPage) == MAP_FAILED) {
    munmap(other, kPage);
    munmap(range, 4 * kPage);
    munmap(target, 4 * kPage);
    return false;
  }
  bool ok = mremap(range, 4 * kPage, 4 * kPage, MREMAP_MAYMOVE | MREMAP_FIXED, target) != MAP_FAILED;
  munmap(range, 4 * kPage);
  munmap(target, 4 * kPage);
  return ok;
}

void before_fork() { PagePoolAllocator::instance->lock(); }
void after_fork_in_parent() { PagePoolAllocator::instance->unlock(); }
void after_fork_in_child() { PagePoolAllocator::instance->unlock_in_child(); }

}  // namespace

// 1 when the pool is now PyTorch's CPU allocator (installing twice is a no-op), 0 when another allocator won;
// one_mapping_per_move keeps to what kernels before 6.17 can move, whatever the probe finds
extern "C" int transferkit_page_pool_install(uint64_t min_bytes, int one_mapping_per_move) {
  if (PagePoolAllocator::instance == nullptr) {
    bool span = !one_mapping_per_move && moves_span_mappings();
    PagePoolAllocator::instance = new PagePoolAllocator(c10::GetCPUAllocator(), min_bytes, span);
    c10::SetCPUAllocator(PagePoolAllocator::instance, /*priority=*/100);
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
  }
  return c10::GetCPUAllocator() == PagePoolAllocator::instance ? 1 : 0;
}

// live, pooled, peak live, faulted, moved bytes; failed moves; free pieces; whether moves span mappings
extern "C" void transferkit_page_pool_stats(uint64_t* out) {
  if (PagePoolAllocator::instance != nullptr) PagePoolAllocator::instance->stats(out);
}

extern "C" void transferkit_page_pool_trim() {
  if (PagePoolAllocator::instance != nullptr) PagePoolAllocator::instance->trim();
}
