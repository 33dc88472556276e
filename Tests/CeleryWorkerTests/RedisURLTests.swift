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

    @Test("Sentinel: one URL or several joined by ';', the first giving credentials and database")
    func sentinel() throws {
        let one = try RedisURL(parsing: "sentinel://:pw@sentinel-a/2")
        #expect(one.endpoint == .sentinel([RedisURL.SentinelNode(host: "sentinel-a", port: 26379)]))
        #expect(one.password == "pw" && one.database == 2 && one.sentinelMaster == nil)
        #expect(one.description == "sentinel://:**@sentinel-a:26379/2")
        let several = try RedisURL(parsing: "sentinel://:pw@a:26380/1;sentinel://b;sentinel://[::1]:26381")
        #expect(
            several.endpoint
                == .sentinel([
                    RedisURL.SentinelNode(host: "a", port: 26380), RedisURL.SentinelNode(host: "b"),
                    RedisURL.SentinelNode(host: "::1", port: 26381),
                ]))
        #expect(several.password == "pw" && several.database == 1)
        #expect(several.description == "sentinel://:**@a:26380;sentinel://b:26379;sentinel://[::1]:26381/1")
        #expect(RedisURL.masked("sentinel://:pw@a/1;sentinel://:pw@b") == "sentinel://:**@a/1;sentinel://:**@b")
    }

    @Test("a Sentinel connection without a master's name, or with no Sentinel reachable, fails saying so")
    func sentinelFailures() async throws {
        var url = try RedisURL(parsing: "sentinel://127.0.0.1:1/0;sentinel://127.0.0.1:2")
        do {
            _ = try await RedisClient(url: url).send(RedisCommand("PING"))
            Issue.record("no master is named")
        } catch {
            #expect(error.code == .invalidConfiguration && error.message.contains("master_name"))
        }
        url.sentinelMaster = "mymaster"
        do {
            _ = try await RedisClient(url: url).send(RedisCommand("PING"))
            Issue.record("no Sentinel listens there")
        } catch {
            #expect(error.code == .connectionFailed)
            #expect(error.message.contains("no Sentinel gave the address of master 'mymaster'"))
            #expect(error.message.contains("127.0.0.1:1") && error.message.contains("127.0.0.1:2"))
        }
    }

    @Test(
        "bad URLs say what is wrong and never show the password",
        arguments: [
            "localhost:6379", "http://localhost", "redis://host:notaport/0", "redis://host:70000", "redis://host/x",
            "rediss://:pw@host", "unix://", "sentinel://:pw@a;redis://:pw@b", "sentinel://a:0",
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
