import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

/// Beat's `solar` schedule against what Celery 5.7's own `solar` (over PyEphem) answers (Tests/Fixtures/beat-solar.json,
/// written by Interop/capture_solar.py): the next event, `is_due` and the next check, from the equator to beyond the
/// polar circles.
@Suite("Beat's solar schedule (Celery's solar)")
struct SolarScheduleTests {
    static let golden = fixtureObject("beat-solar.json")

    /// How far from Celery's an event's time may be: PyEphem stops its search within a tenth of a second, and the
    /// two models of the Sun differ by less than an arcsecond.
    static let tolerance = 0.5

    @Test("every case: the event's time within half a second of Celery's, the same is_due and next check")
    func goldenCases() throws {
        let cases = try #require(Self.golden["solar"]?.arrayValue)
        #expect(cases.count == 648)
        var due = 0
        var worst = 0.0
        var close = 0
        for item in cases {
            let object = try #require(item.objectValue)
            let solar = try SolarSchedule(
                event: try #require(object["event"]?.stringValue), latitude: try #require(object["lat"]?.doubleValue),
                longitude: try #require(object["lon"]?.doubleValue))
            let last = try #require(object["last_run_at"]?.doubleValue)
            let now = try #require(object["now"]?.doubleValue)
            let expected = try #require(object["event_at"]?.doubleValue)
            let label = "\(solar) after \(last), now \(now)"
            let found = solar.nextEvent(after: last)
            worst = max(worst, abs(found - expected))
            #expect(abs(found - expected) < Self.tolerance, "\(label): \(found) against Celery's \(expected)")
            if abs(found - expected) < 0.1 { close += 1 }
            // Whether it is due can only differ when now is within the tolerance of the event.
            guard abs(now - expected) > Self.tolerance else { continue }
            let state = BeatSchedule.solar(solar).isDue(lastRunAt: last, now: now, zone: .utc)
            #expect(state.due == object["is_due"]?.boolValue, "\(label)")
            #expect(abs(state.next - (object["next"]?.doubleValue ?? .nan)) < Self.tolerance, "\(label)")
            if state.due { due += 1 }
        }
        // Both answers are among the cases.
        #expect(due > 50 && due < 600)
        #expect(worst > 0.3 && worst < 0.44)
        #expect(close == 618)  // the README's figure
    }

    @Test("Celery's messages for an unknown event and coordinates out of range, and Celery's repr")
    func refusalsAndRepr() throws {
        for item in try #require(Self.golden["invalid"]?.arrayValue) {
            let object = try #require(item.objectValue)
            let latitude = try #require(object["lat"]?.doubleValue)
            let longitude = try #require(object["lon"]?.doubleValue)
            let written = (PythonRepr.repr(try #require(object["lat"])), PythonRepr.repr(try #require(object["lon"])))
            #expect(
                performing: {
                    try SolarSchedule(
                        event: object["event"]?.stringValue ?? "", latitude: latitude, longitude: longitude, written: written)
                },
                throws: { ($0 as? CeleryWorkerError)?.message == object["error"]?.stringValue })
        }
        for item in try #require(Self.golden["repr"]?.arrayValue) {
            let object = try #require(item.objectValue)
            let text = """
                beat_schedule: {a: {task: t, schedule: {solar: {event: \(object["event"]?.stringValue ?? ""), \
                lat: \(PythonRepr.repr(object["lat"] ?? .null)), lon: \(PythonRepr.repr(object["lon"] ?? .null))}}}}
                """
            let entries = try #require(try CelerySettings.parse(text, source: "beat.yaml").beat.schedule)
            #expect(entries.first?.schedule.description == object["repr"]?.stringValue)
        }
    }

    @Test("beat_schedule takes {solar: {event, lat, lon}} and [event, lat, lon]; refuses other shapes with why")
    func settings() throws {
        let settings = try CelerySettings.parse(
            """
            beat_schedule:
              evening: {task: t, schedule: {solar: {event: sunset, lat: 48.8566, lon: 2.3522}}}
              noon: {task: t, schedule: {solar: [solar_noon, 40, -74]}}
            """, source: "beat.yaml")
        let entries = try #require(settings.beat.schedule)
        #expect(entries[0].schedule == .solar(try SolarSchedule(event: "sunset", latitude: 48.8566, longitude: 2.3522)))
        #expect(entries[1].schedule == .solar(try SolarSchedule(event: "solar_noon", latitude: 40, longitude: -74)))
        let refused: [(String, String)] = [
            ("{solar: [sunset, 0]}", "solar takes {event, lat, lon} or [event, lat, lon]"),
            ("{solar: {event: sunset, lat: 0}}", "solar takes {event, lat, lon}"),
            ("{solar: {event: sunset, lat: '0', lon: 0}}", "solar takes {event, lat, lon}"),
            ("{solar: {event: sunset, lat: 0, lon: 0, elevation: 3}}", "solar takes {event, lat, lon}"),
            ("{solar: [moonrise, 0, 0]}", "solar: Argument event \"moonrise\" is invalid, must be one of dawn_astronomical,"),
            ("{solar: [sunset, 95, 0]}", "solar: Argument latitude 95 is invalid, must be between -90 and 90."),
            ("{solar: [sunset, 0, -180.5]}", "solar: Argument longitude -180.5 is invalid, must be between -180 and 180."),
            // Where Celery would go on to PyEphem with them: refused here.
            ("{solar: [sunset, .nan, 0]}", "solar: Argument latitude nan is invalid"),
            ("{solar: [sunset, 100000000000000000000, 0]}", "solar: Argument latitude 1e+20 is invalid"),
        ]
        for (schedule, message) in refused {
            #expect(
                performing: { try CelerySettings.parse("beat_schedule: {a: {task: t, schedule: \(schedule)}}", source: "beat.yaml") },
                throws: { error in
                    (error as? CeleryWorkerError)?.message.contains("entry 'a': \(message)") == true
                })
        }
    }
}
