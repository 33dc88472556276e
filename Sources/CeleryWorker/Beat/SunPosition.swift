import Foundation

/// Where the Sun is seen from a point on the Earth at sea level, without refraction, as PyEphem's `Sun.compute` gives
/// it for an `Observer` with `pressure = 0` (what Celery's `solar` schedule asks for): the topocentric apparent hour
/// angle and declination, the geocentric apparent right ascension, the local apparent sidereal time, and the Sun's
/// apparent radius. Computed by NREL's Solar Position Algorithm (Reda and Andreas, 2004: VSOP87 as truncated by
/// Meeus, the IAU 1980 nutation, aberration and parallax), which agrees with PyEphem's positions to within an
/// arcsecond.
struct SunPosition {
    /// Topocentric apparent hour angle, radians (PyEphem's `ha`).
    let hourAngle: Double
    /// Topocentric apparent declination, radians (`dec`).
    let declination: Double
    /// Geocentric apparent right ascension, radians (`g_ra`).
    let geocentricRightAscension: Double
    /// Local apparent sidereal time, radians (`Observer.sidereal_time()`).
    let siderealTime: Double
    /// The Sun's apparent radius, radians (`radius`: 1919.26″ across at one astronomical unit, as PyEphem's).
    let radius: Double

    /// The Sun at `date` (a PyEphem date: days since 1899-12-31 12:00 UT), seen from `latitude`, `longitude`
    /// (radians, east positive).
    init(date: Double, latitude: Double, longitude: Double) {
        let julianDay = date + 2_415_020
        let ephemerisDay = julianDay + Self.deltaT(julianDay: julianDay) / 86_400
        let century = (julianDay - 2_451_545) / 36_525
        let ephemerisCentury = (ephemerisDay - 2_451_545) / 36_525
        let millennium = ephemerisCentury / 10

        // The Earth's heliocentric longitude, latitude (radians) and distance (astronomical units).
        let earthLongitude = Self.series(Self.longitude, millennium)
        let earthLatitude = Self.series(Self.latitude, millennium)
        let distance = Self.series(Self.radiusVector, millennium)
        let sunLongitude = earthLongitude + .pi
        let sunLatitude = -earthLatitude

        let (nutationInLongitude, nutationInObliquity) = Self.nutation(ephemerisCentury)
        let u = millennium / 10
        var meanObliquity = 0.0  // arcseconds, Laskar's polynomial
        for coefficient in [2.45, 5.79, 27.87, 7.12, -39.05, -249.67, -51.38, 1999.25, -1.55, -4680.93, 84_381.448] {
            meanObliquity = meanObliquity * u + coefficient
        }
        let obliquity = meanObliquity / 3600 * .pi / 180 + nutationInObliquity
        let aberration = -20.4898 / 3600 / distance * .pi / 180
        let apparentLongitude = sunLongitude + nutationInLongitude + aberration

        let meanSidereal =
            (280.460_618_37 + 360.985_647_366_29 * (julianDay - 2_451_545) + 0.000_387_933 * century * century
                - century * century * century / 38_710_000) * .pi / 180
        let localSidereal = meanSidereal + nutationInLongitude * cos(obliquity) + longitude

        let rightAscension = atan2(
            sin(apparentLongitude) * cos(obliquity) - tan(sunLatitude) * sin(obliquity), cos(apparentLongitude))
        let declination = asin(
            sin(sunLatitude) * cos(obliquity) + cos(sunLatitude) * sin(obliquity) * sin(apparentLongitude))
        let hourAngle = localSidereal - rightAscension

        // Parallax for an observer at sea level on the reference ellipsoid.
        let parallax = 8.794 / 3600 / distance * .pi / 180
        let reduced = atan(0.996_647_19 * tan(latitude))
        let x = cos(reduced)
        let y = 0.996_647_19 * sin(reduced)
        let shift = atan2(-x * sin(parallax) * sin(hourAngle), cos(declination) - x * sin(parallax) * cos(hourAngle))
        self.declination = atan2(
            (sin(declination) - y * sin(parallax)) * cos(shift), cos(declination) - x * sin(parallax) * cos(hourAngle))
        self.hourAngle = Self.normalized(hourAngle - shift)
        geocentricRightAscension = Self.normalized(rightAscension)
        siderealTime = Self.normalized(localSidereal)
        radius = 1919.26 / 2 / 3600 / distance * .pi / 180
    }

    /// An angle in [0, 2π).
    static func normalized(_ angle: Double) -> Double {
        let turns = angle - (angle / (2 * .pi)).rounded(.down) * 2 * .pi
        return turns < 2 * .pi ? turns : 0
    }

    /// TT − UT in seconds: Espenak and Meeus's polynomials (NASA, 2006) for 1986 to 2150 and Morrison and
    /// Stephenson's parabola outside. A second of error moves the Sun by 0.04″.
    static func deltaT(julianDay: Double) -> Double {
        let year = 2000 + (julianDay - 2_451_545) / 365.25
        switch year {
        case 1986..<2005:
            let t = year - 2000
            return 63.86 + 0.3345 * t - 0.060374 * t * t + 0.0017275 * t * t * t + 0.000651814 * pow(t, 4) + 0.00002373599 * pow(t, 5)
        case 2005..<2050:
            let t = year - 2000
            return 62.92 + 0.32217 * t + 0.005589 * t * t
        case 2050..<2150:
            return -20 + 32 * pow((year - 1820) / 100, 2) - 0.5628 * (2150 - year)
        default:
            return -20 + 32 * pow((year - 1820) / 100, 2)
        }
    }

    /// Σ_i τ^i Σ A cos(B + C τ) over the tables of one coordinate, ×10⁻⁸.
    private static func series(_ tables: [[Term]], _ millennium: Double) -> Double {
        var total = 0.0
        var power = 1.0
        for table in tables {
            var sum = 0.0
            for term in table { sum += term.0 * cos(term.1 + term.2 * millennium) }
            total += sum * power
            power *= millennium
        }
        return total / 100_000_000
    }

    /// The nutation in longitude and in obliquity (radians), IAU 1980's 63 terms.
    private static func nutation(_ century: Double) -> (Double, Double) {
        let c2 = century * century
        let c3 = c2 * century
        let arguments = [
            297.850_36 + 445_267.111_480 * century - 0.001_914_2 * c2 + c3 / 189_474,  // the Moon's mean elongation
            357.527_72 + 35_999.050_340 * century - 0.000_160_3 * c2 - c3 / 300_000,  // the Sun's mean anomaly
            134.962_98 + 477_198.867_398 * century + 0.008_697_2 * c2 + c3 / 56_250,  // the Moon's mean anomaly
            93.271_91 + 483_202.017_538 * century - 0.003_682_5 * c2 + c3 / 327_270,  // the Moon's argument of latitude
            125.044_52 - 1934.136_261 * century + 0.002_070_8 * c2 + c3 / 450_000,  // the Moon's ascending node
        ]
        var inLongitude = 0.0
        var inObliquity = 0.0
        for term in nutationTerms {
            let y = term.y
            let argument =
                (Double(y.0) * arguments[0] + Double(y.1) * arguments[1] + Double(y.2) * arguments[2] + Double(y.3)
                    * arguments[3] + Double(y.4) * arguments[4]) * .pi / 180
            inLongitude += (term.psi.0 + term.psi.1 * century) * sin(argument)
            inObliquity += (term.epsilon.0 + term.epsilon.1 * century) * cos(argument)
        }
        // The tables are in units of 0.0001″.
        let toRadians = 1 / 36_000_000 * Double.pi / 180
        return (inLongitude * toRadians, inObliquity * toRadians)
    }

    typealias Term = (Double, Double, Double)

    struct Nutation {
        let y: (Int, Int, Int, Int, Int)
        let psi: (Double, Double)
        let epsilon: (Double, Double)
    }

    // VSOP87's series for the Earth as Meeus truncates them (Astronomical Algorithms, 2nd ed., appendix III), the
    // tables of NREL's Solar Position Algorithm: amplitude ×10⁻⁸, phase, frequency per Julian millennium.
    static let longitude: [[Term]] = [
        [
            (175347046, 0, 0), (3341656, 4.6692568, 6283.07585), (34894, 4.6261, 12566.1517),
            (3497, 2.7441, 5753.3849), (3418, 2.8289, 3.5231), (3136, 3.6277, 77713.7715), (2676, 4.4181, 7860.4194),
            (2343, 6.1352, 3930.2097), (1324, 0.7425, 11506.7698), (1273, 2.0371, 529.691),
            (1199, 1.1096, 1577.3435), (990, 5.233, 5884.927), (902, 2.045, 26.298), (857, 3.508, 398.149),
            (780, 1.179, 5223.694), (753, 2.533, 5507.553), (505, 4.583, 18849.228), (492, 4.205, 775.523),
            (357, 2.92, 0.067), (317, 5.849, 11790.629), (284, 1.899, 796.298), (271, 0.315, 10977.079),
            (243, 0.345, 5486.778), (206, 4.806, 2544.314), (205, 1.869, 5573.143), (202, 2.458, 6069.777),
            (156, 0.833, 213.299), (132, 3.411, 2942.463), (126, 1.083, 20.775), (115, 0.645, 0.98),
            (103, 0.636, 4694.003), (102, 0.976, 15720.839), (102, 4.267, 7.114), (99, 6.21, 2146.17),
            (98, 0.68, 155.42), (86, 5.98, 161000.69), (85, 1.3, 6275.96), (85, 3.67, 71430.7), (80, 1.81, 17260.15),
            (79, 3.04, 12036.46), (75, 1.76, 5088.63), (74, 3.5, 3154.69), (74, 4.68, 801.82), (70, 0.83, 9437.76),
            (62, 3.98, 8827.39), (61, 1.82, 7084.9), (57, 2.78, 6286.6), (56, 4.39, 14143.5), (56, 3.47, 6279.55),
            (52, 0.19, 12139.55), (52, 1.33, 1748.02), (51, 0.28, 5856.48), (49, 0.49, 1194.45), (41, 5.37, 8429.24),
            (41, 2.4, 19651.05), (39, 6.17, 10447.39), (37, 6.04, 10213.29), (37, 2.57, 1059.38),
            (36, 1.71, 2352.87), (36, 1.78, 6812.77), (33, 0.59, 17789.85), (30, 0.44, 83996.85),
            (30, 2.74, 1349.87), (25, 3.16, 4690.48),
        ],
        [
            (628331966747, 0, 0), (206059, 2.678235, 6283.07585), (4303, 2.6351, 12566.1517), (425, 1.59, 3.523),
            (119, 5.796, 26.298), (109, 2.966, 1577.344), (93, 2.59, 18849.23), (72, 1.14, 529.69),
            (68, 1.87, 398.15), (67, 4.41, 5507.55), (59, 2.89, 5223.69), (56, 2.17, 155.42), (45, 0.4, 796.3),
            (36, 0.47, 775.52), (29, 2.65, 7.11), (21, 5.34, 0.98), (19, 1.85, 5486.78), (19, 4.97, 213.3),
            (17, 2.99, 6275.96), (16, 0.03, 2544.31), (16, 1.43, 2146.17), (15, 1.21, 10977.08), (12, 2.83, 1748.02),
            (12, 3.26, 5088.63), (12, 5.27, 1194.45), (12, 2.08, 4694), (11, 0.77, 553.57), (10, 1.3, 6286.6),
            (10, 4.24, 1349.87), (9, 2.7, 242.73), (9, 5.64, 951.72), (8, 5.3, 2352.87), (6, 2.65, 9437.76),
            (6, 4.67, 4690.48),
        ],
        [
            (52919, 0, 0), (8720, 1.0721, 6283.0758), (309, 0.867, 12566.152), (27, 0.05, 3.52), (16, 5.19, 26.3),
            (16, 3.68, 155.42), (10, 0.76, 18849.23), (9, 2.06, 77713.77), (7, 0.83, 775.52), (5, 4.66, 1577.34),
            (4, 1.03, 7.11), (4, 3.44, 5573.14), (3, 5.14, 796.3), (3, 6.05, 5507.55), (3, 1.19, 242.73),
            (3, 6.12, 529.69), (3, 0.31, 398.15), (3, 2.28, 553.57), (2, 4.38, 5223.69), (2, 3.75, 0.98),
        ],
        [
            (289, 5.844, 6283.076), (35, 0, 0), (17, 5.49, 12566.15), (3, 5.2, 155.42), (1, 4.72, 3.52),
            (1, 5.3, 18849.23), (1, 5.97, 242.73),
        ],
        [
            (114, 3.142, 0), (8, 4.13, 6283.08), (1, 3.84, 12566.15),
        ],
        [
            (1, 3.14, 0)
        ],
    ]
    static let latitude: [[Term]] = [
        [
            (280, 3.199, 84334.662), (102, 5.422, 5507.553), (80, 3.88, 5223.69), (44, 3.7, 2352.87),
            (32, 4, 1577.34),
        ],
        [
            (9, 3.9, 5507.55), (6, 1.73, 5223.69),
        ],
    ]
    static let radiusVector: [[Term]] = [
        [
            (100013989, 0, 0), (1670700, 3.0984635, 6283.07585), (13956, 3.05525, 12566.1517),
            (3084, 5.1985, 77713.7715), (1628, 1.1739, 5753.3849), (1576, 2.8469, 7860.4194), (925, 5.453, 11506.77),
            (542, 4.564, 3930.21), (472, 3.661, 5884.927), (346, 0.964, 5507.553), (329, 5.9, 5223.694),
            (307, 0.299, 5573.143), (243, 4.273, 11790.629), (212, 5.847, 1577.344), (186, 5.022, 10977.079),
            (175, 3.012, 18849.228), (110, 5.055, 5486.778), (98, 0.89, 6069.78), (86, 5.69, 15720.84),
            (86, 1.27, 161000.69), (65, 0.27, 17260.15), (63, 0.92, 529.69), (57, 2.01, 83996.85),
            (56, 5.24, 71430.7), (49, 3.25, 2544.31), (47, 2.58, 775.52), (45, 5.54, 9437.76), (43, 6.01, 6275.96),
            (39, 5.36, 4694), (38, 2.39, 8827.39), (37, 0.83, 19651.05), (37, 4.9, 12139.55), (36, 1.67, 12036.46),
            (35, 1.84, 2942.46), (33, 0.24, 7084.9), (32, 0.18, 5088.63), (32, 1.78, 398.15), (28, 1.21, 6286.6),
            (28, 1.9, 6279.55), (26, 4.59, 10447.39),
        ],
        [
            (103019, 1.10749, 6283.07585), (1721, 1.0644, 12566.1517), (702, 3.142, 0), (32, 1.02, 18849.23),
            (31, 2.84, 5507.55), (25, 1.32, 5223.69), (18, 1.42, 1577.34), (10, 5.91, 10977.08), (9, 1.42, 6275.96),
            (9, 0.27, 5486.78),
        ],
        [
            (4359, 5.7846, 6283.0758), (124, 5.579, 12566.152), (12, 3.14, 0), (9, 3.63, 77713.77),
            (6, 1.87, 5573.14), (3, 5.47, 18849.23),
        ],
        [
            (145, 4.273, 6283.076), (7, 3.92, 12566.15),
        ],
        [
            (4, 2.56, 6283.08)
        ],
    ]
    static let nutationTerms: [Nutation] = [
        Nutation(y: (0, 0, 0, 0, 1), psi: (-171996, -174.2), epsilon: (92025, 8.9)),
        Nutation(y: (-2, 0, 0, 2, 2), psi: (-13187, -1.6), epsilon: (5736, -3.1)),
        Nutation(y: (0, 0, 0, 2, 2), psi: (-2274, -0.2), epsilon: (977, -0.5)),
        Nutation(y: (0, 0, 0, 0, 2), psi: (2062, 0.2), epsilon: (-895, 0.5)),
        Nutation(y: (0, 1, 0, 0, 0), psi: (1426, -3.4), epsilon: (54, -0.1)),
        Nutation(y: (0, 0, 1, 0, 0), psi: (712, 0.1), epsilon: (-7, 0)),
        Nutation(y: (-2, 1, 0, 2, 2), psi: (-517, 1.2), epsilon: (224, -0.6)),
        Nutation(y: (0, 0, 0, 2, 1), psi: (-386, -0.4), epsilon: (200, 0)),
        Nutation(y: (0, 0, 1, 2, 2), psi: (-301, 0), epsilon: (129, -0.1)),
        Nutation(y: (-2, -1, 0, 2, 2), psi: (217, -0.5), epsilon: (-95, 0.3)),
        Nutation(y: (-2, 0, 1, 0, 0), psi: (-158, 0), epsilon: (0, 0)),
        Nutation(y: (-2, 0, 0, 2, 1), psi: (129, 0.1), epsilon: (-70, 0)),
        Nutation(y: (0, 0, -1, 2, 2), psi: (123, 0), epsilon: (-53, 0)),
        Nutation(y: (2, 0, 0, 0, 0), psi: (63, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, 1, 0, 1), psi: (63, 0.1), epsilon: (-33, 0)),
        Nutation(y: (2, 0, -1, 2, 2), psi: (-59, 0), epsilon: (26, 0)),
        Nutation(y: (0, 0, -1, 0, 1), psi: (-58, -0.1), epsilon: (32, 0)),
        Nutation(y: (0, 0, 1, 2, 1), psi: (-51, 0), epsilon: (27, 0)),
        Nutation(y: (-2, 0, 2, 0, 0), psi: (48, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, -2, 2, 1), psi: (46, 0), epsilon: (-24, 0)),
        Nutation(y: (2, 0, 0, 2, 2), psi: (-38, 0), epsilon: (16, 0)),
        Nutation(y: (0, 0, 2, 2, 2), psi: (-31, 0), epsilon: (13, 0)),
        Nutation(y: (0, 0, 2, 0, 0), psi: (29, 0), epsilon: (0, 0)),
        Nutation(y: (-2, 0, 1, 2, 2), psi: (29, 0), epsilon: (-12, 0)),
        Nutation(y: (0, 0, 0, 2, 0), psi: (26, 0), epsilon: (0, 0)),
        Nutation(y: (-2, 0, 0, 2, 0), psi: (-22, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, -1, 2, 1), psi: (21, 0), epsilon: (-10, 0)),
        Nutation(y: (0, 2, 0, 0, 0), psi: (17, -0.1), epsilon: (0, 0)),
        Nutation(y: (2, 0, -1, 0, 1), psi: (16, 0), epsilon: (-8, 0)),
        Nutation(y: (-2, 2, 0, 2, 2), psi: (-16, 0.1), epsilon: (7, 0)),
        Nutation(y: (0, 1, 0, 0, 1), psi: (-15, 0), epsilon: (9, 0)),
        Nutation(y: (-2, 0, 1, 0, 1), psi: (-13, 0), epsilon: (7, 0)),
        Nutation(y: (0, -1, 0, 0, 1), psi: (-12, 0), epsilon: (6, 0)),
        Nutation(y: (0, 0, 2, -2, 0), psi: (11, 0), epsilon: (0, 0)),
        Nutation(y: (2, 0, -1, 2, 1), psi: (-10, 0), epsilon: (5, 0)),
        Nutation(y: (2, 0, 1, 2, 2), psi: (-8, 0), epsilon: (3, 0)),
        Nutation(y: (0, 1, 0, 2, 2), psi: (7, 0), epsilon: (-3, 0)),
        Nutation(y: (-2, 1, 1, 0, 0), psi: (-7, 0), epsilon: (0, 0)),
        Nutation(y: (0, -1, 0, 2, 2), psi: (-7, 0), epsilon: (3, 0)),
        Nutation(y: (2, 0, 0, 2, 1), psi: (-7, 0), epsilon: (3, 0)),
        Nutation(y: (2, 0, 1, 0, 0), psi: (6, 0), epsilon: (0, 0)),
        Nutation(y: (-2, 0, 2, 2, 2), psi: (6, 0), epsilon: (-3, 0)),
        Nutation(y: (-2, 0, 1, 2, 1), psi: (6, 0), epsilon: (-3, 0)),
        Nutation(y: (2, 0, -2, 0, 1), psi: (-6, 0), epsilon: (3, 0)),
        Nutation(y: (2, 0, 0, 0, 1), psi: (-6, 0), epsilon: (3, 0)),
        Nutation(y: (0, -1, 1, 0, 0), psi: (5, 0), epsilon: (0, 0)),
        Nutation(y: (-2, -1, 0, 2, 1), psi: (-5, 0), epsilon: (3, 0)),
        Nutation(y: (-2, 0, 0, 0, 1), psi: (-5, 0), epsilon: (3, 0)),
        Nutation(y: (0, 0, 2, 2, 1), psi: (-5, 0), epsilon: (3, 0)),
        Nutation(y: (-2, 0, 2, 0, 1), psi: (4, 0), epsilon: (0, 0)),
        Nutation(y: (-2, 1, 0, 2, 1), psi: (4, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, 1, -2, 0), psi: (4, 0), epsilon: (0, 0)),
        Nutation(y: (-1, 0, 1, 0, 0), psi: (-4, 0), epsilon: (0, 0)),
        Nutation(y: (-2, 1, 0, 0, 0), psi: (-4, 0), epsilon: (0, 0)),
        Nutation(y: (1, 0, 0, 0, 0), psi: (-4, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, 1, 2, 0), psi: (3, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, -2, 2, 2), psi: (-3, 0), epsilon: (0, 0)),
        Nutation(y: (-1, -1, 1, 0, 0), psi: (-3, 0), epsilon: (0, 0)),
        Nutation(y: (0, 1, 1, 0, 0), psi: (-3, 0), epsilon: (0, 0)),
        Nutation(y: (0, -1, 1, 2, 2), psi: (-3, 0), epsilon: (0, 0)),
        Nutation(y: (2, -1, -1, 2, 2), psi: (-3, 0), epsilon: (0, 0)),
        Nutation(y: (0, 0, 3, 2, 2), psi: (-3, 0), epsilon: (0, 0)),
        Nutation(y: (2, -1, 0, 2, 2), psi: (-3, 0), epsilon: (0, 0)),
    ]
}
