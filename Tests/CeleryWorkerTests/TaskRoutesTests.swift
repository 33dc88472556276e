import CeleryProtocol
import Testing

@testable import CeleryWorker

@Suite("task_routes as Celery's MapRoute reads them")
struct TaskRoutesTests {
    @Test("an exact name first, then patterns in order, each matched whole as Python's fnmatch matches")
    func matching() {
        let routes = TaskRoutes([
            TaskRoutes.Table([
                ("tasks.*", ["queue": "tasks"]), ("tasks.mul", ["queue": "math"]), ("*.add", ["queue": "adders"]),
                ("feed.*.fetch", ["queue": "fetch", "priority": 3]), ("job?.[ab]*", ["queue": "jobs"]),
            ]),
            TaskRoutes.Table([("other", ["queue": "second"])]),
        ])
        #expect(routes.route(for: "tasks.mul") == ["queue": "math"])
        #expect(routes.route(for: "tasks.add") == ["queue": "tasks"])  // the first pattern that matches
        #expect(routes.route(for: "app.add") == ["queue": "adders"])
        #expect(routes.route(for: "app.addition") == nil)  // fnmatch matches the whole name
        #expect(routes.route(for: "feed.news.fetch") == ["queue": "fetch", "priority": 3])
        #expect(routes.route(for: "xtasks.mul") == nil && routes.route(for: "feed.fetch") == nil)
        #expect(routes.route(for: "xtasks.add") == ["queue": "adders"])
        #expect(routes.route(for: "other") == ["queue": "second"])  // the next table
        #expect(routes.route(for: "job1.a.x") == ["queue": "jobs"] && routes.route(for: "job1.c.x") == nil)
    }

    @Test("options given win over the route's, unless they are None (Celery's lpmerge)")
    func merging() {
        let routes = TaskRoutes([TaskRoutes.Table([("tasks.mul", ["queue": "math", "priority": 5])])])
        #expect(routes.routed(["task_id": "x"], task: "tasks.mul") == ["queue": "math", "priority": 5, "task_id": "x"])
        #expect(routes.routed(["queue": "mine", "priority": .null], task: "tasks.mul") == ["queue": "mine", "priority": 5])
        #expect(routes.routed(["queue": "mine"], task: "tasks.add") == ["queue": "mine"])
    }

    @Test("a config file's task_routes keep their order; a list is tried in order; router functions are refused")
    func settings() throws {
        let settings = try CelerySettings.parse(
            """
            task_routes:
              "tasks.*": tasks
              "tasks.mul": {queue: math, priority: 7}
              "*.add": {queue: adders}
            """, source: "routes.yaml")
        let routes = try #require(settings.taskRoutes)
        #expect(routes.route(for: "tasks.mul") == ["queue": "math", "priority": 7])
        #expect(routes.route(for: "tasks.add") == ["queue": "tasks"])
        #expect(routes.route(for: "x.add") == ["queue": "adders"])
        #expect(
            routes.value == ["tasks.*": ["queue": "tasks"], "tasks.mul": ["queue": "math", "priority": 7], "*.add": ["queue": "adders"]])
        #expect(TaskRoutes().value == nil)
        let listed = try CelerySettings.parse("CELERY_ROUTES: [{\"a.*\": first}, {\"a.b\": second}]", source: "r.yaml")
        #expect(listed.taskRoutes?.route(for: "a.b") == ["queue": "first"])
        for (text, message) in [
            ("task_routes: [myapp.routers.route_task]", "router function"),
            ("task_routes: {a: [1]}", "must be a queue name or options"),
            ("task_routes: {a: {priority: high}}", "must be a queue name or options"),
            ("task_routes: 5", "must be a mapping"),
        ] {
            #expect(throws: CeleryWorkerError.self) { _ = try CelerySettings.parse(text, source: "r.yaml") }
            do {
                _ = try CelerySettings.parse(text, source: "r.yaml")
            } catch {
                #expect(error.message.contains(message), "\(text): \(error.message)")
            }
        }
    }
}
