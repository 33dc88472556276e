import OrderedCollections

/// The `delivery_tag`s of the last fanout messages, for taking each once where it comes on two channels (under
/// Sentinel, kombu 5.4+'s topic and the one kombu before 5.4 used), as kombu 5.7's `sentinel_fanout_compat` does.
struct RecentDeliveryTags: Sendable {
    private var tags = OrderedSet<String>()
    /// How many tags are kept; the oldest goes first.
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Whether `tag` came before; it is remembered either way.
    mutating func isRepeat(_ tag: String) -> Bool {
        guard tags.append(tag).inserted else { return true }
        if tags.count > limit { tags.removeFirst() }
        return false
    }
}
