import CeleryWorker
import CeleryWorkerCommand

// The bundled program: the demo tasks, registered and handed to the program's library exactly as a program of yours
// registers its own (README, "Writing tasks in Swift").
var tasks = TaskRegistry()
DemoTasks.register(in: &tasks)
DemoLogging.connect(in: &tasks)
await CeleryWorkerProgram.main(tasks: tasks)
