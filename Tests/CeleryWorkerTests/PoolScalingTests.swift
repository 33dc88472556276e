import Testing

@testable import CeleryWorker

@Suite("Pool scaling: --autoscale and its decisions")
struct PoolScalingTests {
    typealias Autoscale = WorkerConfiguration.Autoscale

    @Test("--autoscale reads MAX or MAX,MIN as Celery does (MIN 0 when left out) and refuses what it cannot run")
    func parsing() {
        #expect(Autoscale(parsing: "10") == Autoscale(max: 10, min: 0))
        #expect(Autoscale(parsing: "10,3") == Autoscale(max: 10, min: 3))
        #expect(Autoscale(parsing: "10,") == Autoscale(max: 10, min: 0))
        #expect(Autoscale(parsing: " 4 , 4 ", keepalive: 2) == Autoscale(max: 4, min: 4, keepalive: 2))
        for bad in ["", "0", "3,10", "-1", "ten", "10,x", "10,-1", "1,2,3"] {
            #expect(Autoscale(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test("the process pool starts at MIN with a window of MAX × multiplier; other pools ignore --autoscale")
    func configuration() {
        var configuration = WorkerConfiguration(concurrency: 8, prefetchMultiplier: 4, pool: .process)
        configuration.autoscale = Autoscale(max: 5, min: 2)
        #expect(configuration.slots == 2 && configuration.prefetchCount == 20)
        #expect(CeleryWorkerService.processPoolThreads(configuration) == 6)  // one per child at most, one to receive
        configuration.autoscale = Autoscale(max: 5, min: 0)
        #expect(configuration.slots == 0 && configuration.prefetchCount == 20)
        configuration.disablePrefetch = true  // worker_disable_prefetch: the window is the autoscale maximum
        #expect(configuration.prefetchCount == 5 && configuration.windowMultiplier == 1)
        configuration.disablePrefetch = false
        configuration.pool = .threads
        #expect(configuration.slots == 8 && configuration.prefetchCount == 32 && configuration.poolAutoscale == nil)
    }

    @Test("grows at once to the tasks held, never past MAX")
    func growth() {
        var state = AutoscalerState(Autoscale(max: 4, min: 1, keepalive: 30))
        #expect(state.change(tasksHeld: 3, processes: 1, now: 100) == 2)
        #expect(state.lastScaleUp == 100)
        #expect(state.change(tasksHeld: 9, processes: 3, now: 101) == 1)
        #expect(state.change(tasksHeld: 9, processes: 4, now: 102) == 0)
    }

    @Test("shrinks to the tasks held (at least MIN) only once keepalive passed since the last scale-up or task")
    func shrinking() {
        var state = AutoscalerState(Autoscale(max: 4, min: 1, keepalive: 30))
        // Never scaled up and no task received: stays, as Celery's does.
        #expect(state.change(tasksHeld: 0, processes: 3, now: 1_000) == 0)
        #expect(state.change(tasksHeld: 4, processes: 1, now: 100) == 3)
        #expect(state.change(tasksHeld: 0, processes: 4, now: 129) == 0)
        state.lastTaskReceived = 120  // a later task counts from then
        #expect(state.change(tasksHeld: 0, processes: 4, now: 131) == 0)
        #expect(state.change(tasksHeld: 2, processes: 4, now: 151) == -2)
        #expect(state.change(tasksHeld: 0, processes: 2, now: 151) == -1)
        #expect(state.change(tasksHeld: 0, processes: 1, now: 500) == 0)
        #expect(state.info(processes: 1, tasksHeld: 0) == ["max": 4, "min": 1, "current": 1, "qty": 0])
    }
}
