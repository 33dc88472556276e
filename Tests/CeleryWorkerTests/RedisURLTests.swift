import CeleryWorker
import Testing

@Suite("Redis URLs as kombu takes them")
struct RedisURLTests {
    @Test("host, port, database, credentials")
    func tcp() throws {
        let url = try RedisURL(parsing: "redis://user:p%40ss@example.org:6380/3")
        #expect(url.endpoint == .tcp(host: "example.org", port: 6380))
        #expect(url.username == "user")
        #expect(url.password == "p@ss")
        #expect(url.database == 3)
        #expect(url.description == "redis://user:**@example.org:6380/3")
        let passwordOnly = try RedisURL(parsing: "redis://:secret@localhost/1")
        #expect(passwordOnly.username == nil && passwordOnly.password == "secret")
        #expect(passwordOnly.description == "redis://:**@localhost:6379/1")
        let defaults = try RedisURL(parsing: "redis://")
        #expect(defaults.endpoint == .tcp(host: "localhost", port: 6379) && defaults.database == 0)
        #expect(try RedisURL(parsing: "redis://[::1]:7000/2").endpoint == .tcp(host: "::1", port: 7000))
    }

    @Test("unix sockets")
    func sockets() throws {
        #expect(try RedisURL(parsing: "unix:///run/redis.sock").endpoint == .unixSocket(path: "/run/redis.sock"))
        let socket = try RedisURL(parsing: "redis+socket:///tmp/r.sock?virtual_host=4")
        #expect(socket.endpoint == .unixSocket(path: "/tmp/r.sock") && socket.database == 4)
    }

    @Test(
        "bad URLs say what is wrong and never show the password",
        arguments: [
            "localhost:6379", "http://localhost", "redis://host:notaport/0", "redis://host:70000", "redis://host/x",
            "rediss://:pw@host", "unix://",
        ])
    func invalid(text: String) {
        do {
            _ = try RedisURL(parsing: text)
            Issue.record("\(text) should not parse")
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(!error.message.contains(":pw@"))
        }
    }
}
